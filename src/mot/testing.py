"""Tiny offline experts for tests, benchmarks and the CI version of the demo.

Each family gets a random HF causal LM a few hundred kB in size and its own byte-level BPE tokenizer
trained with ``tokenizers`` on local text (the Python standard library sources, present on every
machine).  Vocabulary sizes differ per family, so heterogeneous tokenisation is exercised.  Models
are written with ``save_pretrained`` and read back through ``AutoModelForCausalLM.from_pretrained``
-- the same loading path real experts take.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# family -> (vocab size of its tokenizer, extra config kwargs)
TINY_FAMILIES: dict[str, tuple[int, dict]] = {
    "gpt2": (320, {"n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 512}),
    "llama": (384, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "qwen2": (448, {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "qwen3": (400, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "head_dim": 8,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "mistral": (352, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                      "sliding_window": None}),
    "starcoder2": (416, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                         "sliding_window": None}),
    "gpt_bigcode": (336, {"n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 512,
                          "multi_query": True}),
    "gpt_neox": (368, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "max_position_embeddings": 512}),
    "phi3": (432, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                   "sliding_window": None}),
    "gemma": (392, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "head_dim": 8,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "gemma3_text": (424, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "head_dim": 8,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                          "sliding_window": 16, "layer_types": None}),
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


@dataclass(frozen=True)
class TinyExpert:
    family: str
    path: Path  # directory with config.json, model.safetensors and the tokenizer files


def corpus_text(max_bytes: int = 1_500_000) -> str:
    """Real text present on every machine: Python standard library sources, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pieces: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        pieces.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return "".join(pieces)


def train_tiny_tokenizer(vocab_size: int, out_dir: Path, text: str | None = None):
    """Train a byte-level BPE on ``text`` and save it as an HF fast tokenizer in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = corpus_text() if text is None else text
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunk = 4096
    tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.padding_side = "left"
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_expert(family: str, out_dir: str | os.PathLike, seed: int = 0,
                      text: str | None = None) -> TinyExpert:
    """Build (or reuse) a tiny random expert of ``family`` in ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny recipe for family {family!r}; known: {', '.join(sorted(TINY_FAMILIES))}")
    out = Path(out_dir)
    marker = out / ".tiny-complete"
    vocab, kwargs = TINY_FAMILIES[family]
    recipe = hashlib.sha256(json.dumps([family, vocab, kwargs, seed], sort_keys=True).encode()).hexdigest()
    if marker.exists() and marker.read_text() == recipe:
        return TinyExpert(family, out)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(vocab, out, text)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id}
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "sliding_window"}
    if family == "gemma3_text":
        kwargs = {k: v for k, v in kwargs.items() if k != "layer_types"}
    config = AutoConfig.for_model(family, vocab_size=len(tok), **special, **kwargs)
    if hasattr(config, "tie_word_embeddings") and family in ("gpt2", "gpt_bigcode", "gemma", "gemma3_text"):
        config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    marker.write_text(recipe)
    return TinyExpert(family, out)


def build_tiny_experts(root: str | os.PathLike, families: list[str] | None = None) -> dict[str, TinyExpert]:
    """Build one tiny expert per family under ``root``; the corpus is read once."""
    families = list(TINY_FAMILIES) if families is None else families
    text = corpus_text()
    return {f: build_tiny_expert(f, Path(root) / f, seed=i, text=text) for i, f in enumerate(families)}


def load_tiny_expert(expert: TinyExpert):
    """Load a tiny expert back through the real HF loading path: (model in eval mode, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(expert.path, dtype="float32")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(expert.path)
    return model, tokenizer

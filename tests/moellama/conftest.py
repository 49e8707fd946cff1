"""Tiny moellama models and a tokenizer, built offline in a second or two."""

from __future__ import annotations

import pytest
import torch

from mot.moellama.config import ModelConfig

CORPUS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n",
    "def f(x):\n\treturn x * 2  # tabs, spaces   and symbols {}[]()\n",
    "Unicode: café, naïve, Straße, 日本語のテキスト, emoji 🤖🚀👍🏽 and done.\n",
] * 20


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=96, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, num_experts=4, top_k=2,
                ffn_dim=48, max_seq_len=64, load_balancing_loss_coef=0.01, router_z_loss_coef=0.001)
    return ModelConfig(**(base | overrides))


def tiny_model(seed: int = 0, **overrides):
    from mot.moellama.model import MoeLlama

    torch.manual_seed(seed)
    return MoeLlama(tiny_config(**overrides)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from mot.moellama.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=300)


# ``mot llama train`` of a tiny model on a tiny corpus, for the tests that need a real run directory
TINY = ["model.vocab_size=320", "model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.num_experts=4", "model.top_k=2", "model.ffn_dim=48", "model.max_seq_len=64",
        "training.seq_len=32", "training.batch_size=4", "training.learning_rate=0.003", "training.warmup_steps=2",
        "training.eval_steps=3", "training.max_val_windows=4", "training.val_fraction=0.25", "device.type=cpu",
        "inference.max_new_tokens=8"]


def sets(items):
    """``--set`` arguments for ``items``."""
    return [arg for item in items for arg in ("--set", item)]


def train_tiny_run(root, max_steps: int, *extra: str):
    """``mot llama train`` (in process) of the ``TINY`` model for ``max_steps`` on 16 corpus documents under
    ``root`` (``extra``: more overrides, applied after ``TINY``); returns its overrides and typer's result."""
    from typer.testing import CliRunner

    from mot.cli.llama_cmd import app

    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS[:16]):
        (corpus / f"doc{i:02d}.txt").write_text(text * 3, encoding="utf-8")
    overrides = [*TINY, *extra, f"training.dataset={corpus}", f"paths.output_dir={root / 'run'}",
                 f"paths.model_path={root / 'model'}", f"training.max_steps={max_steps}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        result = CliRunner().invoke(app, ["train", "--no-progress", *sets(overrides)])
    finally:
        torch.set_num_threads(threads)
    return overrides, result

"""A controlled composition task: queries whose answers need facts that live in two different experts.

Each of ``num_experts`` experts owns a disjoint set of invented entities (random syllable names) and one
relation: every entity gets a value drawn uniformly from that expert's value words (colours, animals,
fruits).  Expert ``e`` is trained (``train_composition_expert``, the project's own ``Trainer``, its own
byte-level BPE tokenizer) on its corpus alone: its facts (``zobak = red``), queries over pairs of its own
entities, and neutral lists of every expert's value words (so every LM head has seen every answer word,
but no expert sees another's facts).

A composition query names one entity of expert ``i`` and one of expert ``j != i``::

    prompt  "zobak & mifutel:"
    target  " red & fox"

**The cap.**  A value is independent of everything a model without its owner's weights can see, so any
model that lacks one of the two experts pays at least ``log(values_per_expert)`` nats per query in
expectation (the entropy of the missing value) -- whatever router picks the single expert, and whatever
the capacity control (MoT whose peers are copies of the primary) learns: test queries use *held-out*
entities that never occur in the training queries, so neither the router nor the interaction layers can
memorise their facts.  Only a model that reads the other expert can go below ``cap_nats``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mot.errors import UsageError

VALUE_WORDS: tuple[tuple[str, ...], ...] = (
    ("red", "blue", "green", "black", "white", "pink", "gold", "gray", "brown", "purple", "orange", "silver"),
    ("fox", "owl", "cat", "dog", "bee", "yak", "eel", "ant", "bat", "cow", "elk", "hen"),
    ("fig", "lime", "plum", "pear", "kiwi", "date", "apple", "mango", "melon", "grape", "lemon", "peach"),
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
# expert family -> (tokenizer vocabulary, model config): two families, two tokenizers
EXPERT_RECIPES: dict[str, tuple[int, dict[str, Any]]] = {
    "llama": (300, {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128}),
    "qwen2": (420, {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128}),
    "gpt2": (360, {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 128}),
}


@dataclass(frozen=True)
class CompositionQuery:
    prompt: str
    target: str
    entities: tuple[str, str]
    experts: tuple[int, int]  # owner of each entity


@dataclass
class CompositionTask:
    entities: list[list[str]]  # per expert
    values: list[list[str]]  # per expert
    facts: dict[str, tuple[int, str]]  # entity -> (owner, value)
    held_out: list[list[str]]  # per expert: entities that only test queries use
    train: list[CompositionQuery] = field(default_factory=list)
    test: list[CompositionQuery] = field(default_factory=list)
    seed: int = 0

    @property
    def num_experts(self) -> int:
        return len(self.entities)

    @property
    def cap_nats(self) -> float:
        """Lower bound on the expected nats per query of any model that lacks one of the two experts."""
        return math.log(min(len(v) for v in self.values))

    def corpus(self, expert: int, repeats: int = 6, pair_queries: int | None = None) -> list[str]:
        """Expert ``expert``'s training lines: its facts (``repeats`` times); queries over pairs of its own
        entities and, as many, queries pairing one of its entities with a fresh invented name (in either
        order) whose value is drawn from the *other* experts' value words (so the expert knows the query
        format and the other relations' value sets, but none of their facts); and lists of every expert's
        value words.  Shuffled with the task seed."""
        rng = random.Random(self.seed * 1000 + expert)
        own = self.entities[expert]
        taken = set(self.facts)
        foreign = [v for j, vs in enumerate(self.values) if j != expert for v in vs]
        lines = [fact_line(e, self.facts[e][1]) for e in own] * repeats
        for n in range(len(own) * repeats if pair_queries is None else pair_queries):
            if n % 2 == 0:
                a, b = rng.sample(own, 2)
                q = make_query(a, b, self.facts)
            else:
                nonce = next(x for x in iter(lambda: _names(rng, 1)[0], None) if x not in taken)
                facts = {**self.facts, nonce: (-1, rng.choice(foreign))}
                a, b = rng.choice(own), nonce
                q = make_query(*((a, b) if rng.random() < 0.5 else (b, a)), facts)
            lines.append(q.prompt + q.target)
        all_values = [v for vs in self.values for v in vs]
        for _ in range(max(8, len(all_values))):
            lines.append("values: " + " ".join(rng.sample(all_values, min(6, len(all_values)))))
        rng.shuffle(lines)
        return lines

    def text(self) -> str:
        """Every line of every corpus and query (what the experts' tokenizers are trained on)."""
        rows = [line for e in range(self.num_experts) for line in self.corpus(e, repeats=1)]
        rows += [q.prompt + q.target for q in self.train + self.test]
        return "\n".join(rows) + "\n"


def fact_line(entity: str, value: str) -> str:
    return f"{entity} = {value}"


def make_query(a: str, b: str, facts: dict[str, tuple[int, str]]) -> CompositionQuery:
    return CompositionQuery(f"{a} & {b}:", f" {facts[a][1]} & {facts[b][1]}", (a, b), (facts[a][0], facts[b][0]))


def _names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))))
    return sorted(names)


def build_composition_task(num_experts: int = 2, entities_per_expert: int = 40, values_per_expert: int = 8,
                           held_out_per_expert: int = 16, train_queries: int = 240, test_queries: int = 64,
                           seed: int = 0) -> CompositionTask:
    """Entities, facts and cross-expert queries (see the module docstring).  Train queries use the first
    ``entities_per_expert - held_out_per_expert`` entities of each expert, test queries only the held-out ones;
    each query pairs two different experts, in random order."""
    if not 2 <= num_experts <= len(VALUE_WORDS):
        raise UsageError(f"num_experts={num_experts}: the composition task has 2 to {len(VALUE_WORDS)} experts")
    if not 2 <= values_per_expert <= len(VALUE_WORDS[0]):
        raise UsageError(f"values_per_expert={values_per_expert}: give 2 to {len(VALUE_WORDS[0])}")
    if not 2 <= held_out_per_expert <= entities_per_expert - 2:
        raise UsageError(f"held_out_per_expert={held_out_per_expert}: give 2 to entities_per_expert - 2 "
                         f"({entities_per_expert - 2}) so both train and test queries have entities")
    rng = random.Random(seed)
    pool = _names(rng, num_experts * entities_per_expert)
    rng.shuffle(pool)
    entities = [sorted(pool[e * entities_per_expert:(e + 1) * entities_per_expert]) for e in range(num_experts)]
    values = [list(VALUE_WORDS[e][:values_per_expert]) for e in range(num_experts)]
    facts = {ent: (e, rng.choice(values[e])) for e in range(num_experts) for ent in entities[e]}
    shuffled = [rng.sample(ents, len(ents)) for ents in entities]
    held_out = [sorted(s[:held_out_per_expert]) for s in shuffled]
    seen = [sorted(s[held_out_per_expert:]) for s in shuffled]

    def queries(groups: list[list[str]], count: int) -> list[CompositionQuery]:
        out, used = [], set()
        limit = sum(len(groups[i]) * len(groups[j]) for i in range(num_experts) for j in range(num_experts) if i != j)
        while len(out) < min(count, limit):
            i, j = rng.sample(range(num_experts), 2)
            a, b = rng.choice(groups[i]), rng.choice(groups[j])
            if (a, b) not in used:
                used.add((a, b))
                out.append(make_query(a, b, facts))
        return out

    task = CompositionTask(entities, values, facts, held_out, seed=seed)
    task.train = queries(seen, train_queries)
    task.test = queries(held_out, test_queries)
    return task


# -- experts -----------------------------------------------------------------------------------------
class _LineLMTask:
    """``mot.training.TrainTask`` of a plain causal LM on text lines (each line + EOS, right padding)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.module = model
        self.tokenizer = tokenizer

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": "model", "params": [p for p in self.module.parameters() if p.requires_grad],
                 "lr_scale": 1.0}]

    def collate(self, lines: Sequence[str]) -> dict[str, Any]:
        import torch

        tok = self.tokenizer
        rows = [tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for line in lines]
        rows = [[tok.bos_token_id, *r] for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
            labels[b, 1:len(r)] = torch.tensor(r[1:])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, batch: dict[str, Any]):
        out = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, {"lm_loss": float(out.loss.detach()), "tokens": float(batch["attention_mask"].sum())}

    def trainable_state_dict(self):
        return {k: v for k, v in self.module.state_dict().items()}

    def load_trainable_state_dict(self, state):
        self.module.load_state_dict(state)


def train_composition_expert(task: CompositionTask, expert: int, family: str, out_dir: str | Path, *,
                             steps: int = 600, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0,
                             recipe: tuple[int, dict[str, Any]] | None = None) -> Path:
    """Train expert ``expert`` of ``task`` (a fresh ``family`` model with its own tokenizer) on its corpus
    with ``mot.training.Trainer``; saved as an HF model + tokenizer in ``out_dir`` (reused when complete)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mot.testing import train_tiny_tokenizer
    from mot.training import Trainer, TrainingConfig

    if family not in EXPERT_RECIPES and recipe is None:
        raise UsageError(f"no composition-expert recipe for family {family!r}; known: {', '.join(EXPERT_RECIPES)}")
    vocab, kwargs = recipe or EXPERT_RECIPES[family]
    out = Path(out_dir)
    stamp = json.dumps({"family": family, "vocab": vocab, "kwargs": kwargs, "steps": steps, "batch": batch_size,
                        "lr": learning_rate, "seed": seed, "task_seed": task.seed, "expert": expert,
                        "corpus": task.corpus(expert)}, sort_keys=True)
    marker = out / ".composition-expert"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(vocab, out, task.text())
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = AutoConfig.for_model(family, vocab_size=len(tok), **special, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    lm_task = _LineLMTask(model, tok)
    cfg = TrainingConfig(batch_size=batch_size, learning_rate=learning_rate, max_steps=steps, warmup_steps=20,
                         min_lr_ratio=0.1, device="cpu", precision="fp32", seed=seed, log_every=max(1, steps // 4),
                         best_metric=None, tensorboard=False, plots=False, progress=False, keep_last=1)
    lines = task.corpus(expert)
    Trainer(lm_task, cfg, lines, None, run_dir=out / "train", collate_fn=lm_task.collate).fit()
    model.eval()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, special[key])
    model.save_pretrained(out)
    marker.write_text(stamp)
    return out


def load_composition_expert(path: str | Path):
    """``(model in eval mode, tokenizer)`` of a trained composition expert (the real HF loading path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


__all__ = [
    "EXPERT_RECIPES",
    "VALUE_WORDS",
    "CompositionQuery",
    "CompositionTask",
    "build_composition_task",
    "fact_line",
    "load_composition_expert",
    "make_query",
    "train_composition_expert",
]

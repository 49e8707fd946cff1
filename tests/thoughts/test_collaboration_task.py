"""The controlled composition task (``mot.data.composition``): facts split over experts, queries that need two."""

from __future__ import annotations

import math
import re

import pytest
import torch

from mot.data.composition import (
    build_composition_task,
    fact_line,
    load_composition_expert,
    train_composition_expert,
)
from mot.errors import UsageError
from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig, encode_pair


def test_queries_need_two_experts_and_test_entities_are_held_out():
    task = build_composition_task(num_experts=3, entities_per_expert=10, values_per_expert=4, held_out_per_expert=4,
                                  train_queries=50, test_queries=20, seed=3)
    assert task.cap_nats == pytest.approx(math.log(4))
    owners = [set(ents) for ents in task.entities]
    assert all(not (owners[i] & owners[j]) for i in range(3) for j in range(3) if i != j)
    train_entities = {e for q in task.train for e in q.entities}
    test_entities = {e for q in task.test for e in q.entities}
    assert not train_entities & test_entities
    assert test_entities <= {e for held in task.held_out for e in held}
    for q in task.train + task.test:
        a, b = q.entities
        assert q.experts[0] != q.experts[1] and q.experts == (task.facts[a][0], task.facts[b][0])
        assert q.prompt == f"{a} & {b}:" and q.target == f" {task.facts[a][1]} & {task.facts[b][1]}"
        assert task.facts[a][1] in task.values[q.experts[0]]
    # an expert's corpus states only its own facts
    for e in range(3):
        words = set(re.findall(r"[a-z]+", "\n".join(task.corpus(e))))
        assert set(task.entities[e]) <= words
        assert not words & {ent for j in range(3) if j != e for ent in task.entities[j]}
    assert build_composition_task(seed=3, entities_per_expert=10, held_out_per_expert=4, values_per_expert=4,
                                  num_experts=3, train_queries=50, test_queries=20).train == task.train


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(UsageError, match="held_out_per_expert"):
        build_composition_task(entities_per_expert=6, held_out_per_expert=5)
    with pytest.raises(UsageError, match="num_experts"):
        build_composition_task(num_experts=5)


def _nats(model, tok, prompt: str, target: str) -> float:
    pair = encode_pair(tok, prompt, target)
    ids = torch.cat([pair.input_ids, pair.input_ids.new_tensor([tok.eos_token_id])])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None, :-1]).logits[0].float(), -1)
    rows = torch.arange(pair.num_prompt_tokens - 1, len(ids) - 1)
    return -float(logp[rows].gather(1, ids[rows + 1][:, None]).sum())


def test_small_experts_learn_only_their_own_facts_and_compose_in_a_mot(tmp_path):
    task = build_composition_task(entities_per_expert=8, values_per_expert=4, held_out_per_expert=3,
                                  train_queries=20, test_queries=8, seed=1)
    recipes = {"llama": (290, {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}),
               "qwen2": (330, {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64})}
    experts = []
    for e, family in enumerate(("llama", "qwen2")):
        path = train_composition_expert(task, e, family, tmp_path / family, steps=150, batch_size=16,
                                        learning_rate=1e-2, recipe=recipes[family])
        experts.append(load_composition_expert(path))
    toks = [t for _, t in experts]
    assert len(toks[0]) != len(toks[1])
    assert any(toks[0].tokenize(q.prompt + q.target) != toks[1].tokenize(q.prompt + q.target) for q in task.train)
    for e, (model, tok) in enumerate(experts):
        own = [_nats(model, tok, f"{x} =", f" {task.facts[x][1]}") for x in task.entities[e]]
        other = [_nats(model, tok, f"{x} =", f" {task.facts[x][1]}") for x in task.entities[1 - e]]
        assert fact_line(task.entities[e][0], "v") == f"{task.entities[e][0]} = v"
        assert sum(own) / len(own) < 0.5 * task.cap_nats < sum(other) / len(other)
    mot = MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts],
                            MoTConfig(num_stacks=2, top_k=2, shared_dim=32, interaction_heads=4, dropout=0.0),
                            encoder=HashingEncoder(16), seed=0).eval()
    q = task.test[0]
    out = mot([q.prompt], [q.target])
    primary = out.primary[0]
    # an untrained MoT is its primary: a query costs what that expert alone pays, at least the cap
    model, tok = experts[primary]
    want = _nats(model, tok, q.prompt, q.target)
    logp = torch.log_softmax(out.logits[0].float(), -1)
    ids = torch.cat([out.tokens[0].input_ids, out.tokens[0].input_ids.new_tensor([tok.eos_token_id])])
    rows = torch.arange(out.tokens[0].num_prompt_tokens - 1, len(ids) - 1)
    got = -float(logp[rows].gather(1, ids[rows + 1][:, None]).sum())
    assert got == pytest.approx(want, abs=1e-3) and got > task.cap_nats

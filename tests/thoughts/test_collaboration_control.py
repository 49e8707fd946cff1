"""The capacity control (``MoTConfig.peers="self"``): the same MoT whose peer slots hold copies of the primary."""

from __future__ import annotations

import copy

import pytest
import torch

from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig, encode_pair, lm_loss
from mot.thoughts.training import MoTTrainTask

from .helpers import FAMILIES, fixed_routing

PROMPT = "# add two numbers\n"
CODE = "def add(a, b):\n    return a + b\n"


def _num_trainable(mot: MixtureOfThoughts) -> int:
    return sum(p.numel() for p in mot.trainable_parameters())


def test_control_has_the_same_trainable_size_and_keys_as_mot(make_mot):
    mot, control = make_mot(), make_mot(peers="self")
    assert control.config.peers == "self" and mot.config.peers == "routed"
    assert _num_trainable(control) == _num_trainable(mot) > 0
    assert list(control.trainable_state_dict()) == list(mot.trainable_state_dict())
    assert control.peer_experts([2, 0, 1]) == [2, 2] and mot.peer_experts([2, 0, 1]) == [0, 1]


def test_zero_gate_control_is_exactly_the_primary(make_mot, trio):
    control = make_mot(randomise=True, gate=0.0, peers="self")
    for primary in range(3):
        rows = [[primary, *[e for e in range(3) if e != primary]]]
        out = control([PROMPT], [CODE], routing=fixed_routing(rows))
        model, tok = trio[primary]
        with torch.no_grad():
            hf = model(encode_pair(tok, PROMPT, CODE).input_ids[None]).logits[0]
        torch.testing.assert_close(out.logits[0], hf, atol=1e-5, rtol=0)


def test_control_equals_mot_whose_peer_is_a_literal_copy_of_the_primary(trio, make_mot):
    """Oracle: the control over (gpt2, llama, qwen2) routed to (llama, gpt2) == a routed MoT over (llama, a deep
    copy of llama) routed to (llama, copy) whose copy's projections are the primary's."""
    control = make_mot(randomise=True, peers="self", top_k=2)
    _, (m1, t1), _ = trio
    options = {"num_stacks": 2, "top_k": 2, "interaction_heads": 4, "dropout": 0.0, "router_hidden_dim": 16}
    literal = MixtureOfThoughts([m1, copy.deepcopy(m1)], [t1, t1], MoTConfig(**options),
                                expert_specs=["llama", "llama-copy"], encoder=HashingEncoder(32)).eval()
    with torch.no_grad():
        for src, dst in zip(control.interactions, literal.interactions, strict=True):
            for name in ("query", "key", "value", "out"):
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            # literal experts 0 and 1 are both the control's expert 1 (llama)
            for i_dst, i_src in ((0, 1), (1, 1)):
                dst.norms[i_dst].load_state_dict(src.norms[i_src].state_dict())
                dst.to_shared[i_dst].load_state_dict(src.to_shared[i_src].state_dict())
                dst.from_shared[i_dst].load_state_dict(src.from_shared[i_src].state_dict())
                dst.gates[i_dst].copy_(src.gates[i_src])
    weights = [[0.6, 0.4]]
    with torch.no_grad():
        got = control([PROMPT], [CODE], routing=fixed_routing([[1, 0]], weights)).logits[0]
        want = literal([PROMPT], [CODE], routing=fixed_routing([[0, 1]], weights, num_experts=2)).logits[0]
        routed = make_mot(randomise=True, top_k=2)([PROMPT], [CODE], routing=fixed_routing([[1, 0]], weights))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, routed.logits[0], atol=1e-3)  # a routed peer changes the output


def test_control_trains_and_only_reads_the_primary(make_mot, monkeypatch):
    control = make_mot(peers="self", top_k=2).train()
    seen: list[int] = []
    original = control.compute_peer_states

    def spy(expert, prompts, completions=None):
        seen.append(expert)
        return original(expert, prompts, completions)

    monkeypatch.setattr(control, "compute_peer_states", spy)
    task = MoTTrainTask(control)
    batch = task.collate([(PROMPT, CODE), ("# greet\n", "print('hi')\n")])
    loss, metrics = task.loss(batch)
    loss.backward()
    routing = control.router(control.features(batch["prompts"]))
    assert set(seen) <= set(routing.primary.tolist())
    gates = [p.grad for layer in control.interactions for p in layer.gates if p.grad is not None]
    assert gates and any(float(g.abs().sum()) > 0 for g in gates)
    assert metrics["lm_loss"] > 0


@pytest.mark.parametrize("visibility", ["stable"])
def test_control_full_generation_with_caches_equals_recompute(make_mot, visibility):
    from mot.thoughts import FullDecoder, recompute_next_logits

    control = make_mot(randomise=True, peers="self", peer_visibility=visibility)
    experts = control.slot_experts([1, 0, 2])
    assert experts == [1, 1, 1]
    weights = torch.tensor([0.5, 0.3, 0.2])
    decoder = FullDecoder(control, "def add(a, b):", experts, weights)
    logits = decoder.prefill()
    tokens: list[int] = []
    for _ in range(6):
        reference = recompute_next_logits(control, "def add(a, b):", tokens, experts, weights)
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
        tokens.append(int(torch.argmax(reference)))
        decoder.accept(tokens[-1])
        logits = decoder.advance()
    out = control([PROMPT], [CODE], routing=fixed_routing([[1, 0, 2]]))
    assert lm_loss(out) > 0


def test_unknown_peers_value_is_a_config_error():
    with pytest.raises(ValueError, match="peers"):
        MoTConfig(peers="copies")
    assert FAMILIES[1] == "llama"

"""The adapter capacity control (``MoTConfig.peers="adapter"``): routing plus a token-wise MLP adapter of
MoT's trainable size on the routed primary -- no peer is run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mot.thoughts import FullDecoder, encode_pair, lm_loss, recompute_next_logits
from mot.thoughts.training import MoTTrainTask

from .helpers import fixed_routing

PROMPT = "# add two numbers\n"
CODE = "def add(a, b):\n    return a + b\n"


def _num_trainable(mot) -> int:
    return sum(p.numel() for p in mot.trainable_parameters())


def test_adapter_control_has_mot_trainable_size_and_no_peers(make_mot):
    mot, adapter = make_mot(), make_mot(peers="adapter")
    assert _num_trainable(adapter) == _num_trainable(mot) > 0
    assert list(adapter.trainable_state_dict()) == list(mot.trainable_state_dict())
    assert adapter.peer_experts([2, 0, 1]) == [] and adapter.slot_experts([2, 0, 1]) == [2]


def test_zero_gate_adapter_control_is_exactly_the_primary(make_mot, trio):
    control = make_mot(randomise=True, gate=0.0, peers="adapter")
    for primary in range(3):
        out = control([PROMPT], [CODE], routing=fixed_routing([[primary, (primary + 1) % 3, (primary + 2) % 3]]))
        model, tok = trio[primary]
        with torch.no_grad():
            hf = model(encode_pair(tok, PROMPT, CODE).input_ids[None]).logits[0]
        torch.testing.assert_close(out.logits[0], hf, atol=1e-5, rtol=0)


def test_adapter_update_is_the_mlp_through_the_shared_space_scaled_by_the_primary_weight(make_mot):
    """Oracle written out by hand: the primary's own stacks with ``h + gate * w0 * from(out(gelu^3(proj h)))``
    after each stack; changing the primary's routing weight changes the output, the other slots' do not."""
    control = make_mot(randomise=True, peers="adapter", top_k=2)
    primary = 1
    adapter = control.adapters[primary]
    ids = encode_pair(adapter.tokenizer, PROMPT, CODE).input_ids[None]
    with torch.no_grad():
        state = adapter.new_state()
        hidden = adapter.embed(ids, None, state)
        for q, (start, stop) in enumerate(control.stacks[primary]):
            hidden = adapter.run_layers(hidden, start, stop, state)
            layer = control.interactions[q]
            x = layer.to_shared[primary](layer.norms[primary](hidden))
            for lin in (layer.query, layer.key, layer.value):
                x = F.gelu(lin(x))
            hidden = hidden + layer.gates[primary] * (0.7 * layer.from_shared[primary](layer.out(x)))
        want = adapter.logits(hidden)[0]
        got = control([PROMPT], [CODE], routing=fixed_routing([[primary, 0]], [[0.7, 0.3]])).logits[0]
        other = control([PROMPT], [CODE], routing=fixed_routing([[primary, 2]], [[0.7, 0.3]])).logits[0]
        moved = control([PROMPT], [CODE], routing=fixed_routing([[primary, 0]], [[0.4, 0.6]])).logits[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other, got, atol=0, rtol=0)  # no peer is read
    assert not torch.allclose(moved, got, atol=1e-4)


def test_adapter_control_trains_runs_no_peer_and_reaches_the_router(make_mot, monkeypatch):
    control = make_mot(randomise=True, peers="adapter", top_k=2, gate=0.5).train()
    seen: list[int] = []
    original = control.compute_peer_states

    def spy(expert, prompts, completions=None):
        seen.append(expert)
        return original(expert, prompts, completions)

    monkeypatch.setattr(control, "compute_peer_states", spy)
    task = MoTTrainTask(control)
    batch = task.collate([(PROMPT, CODE), ("# greet\n", "print('hi')\n")])
    loss, metrics = task.loss(batch)
    assert seen == []
    # the LM loss alone (no balance/entropy terms) reaches the router through the primary weight
    control.zero_grad()
    out = control(batch["prompts"], batch["targets"])
    lm_loss(out).backward()
    router_grads = [p.grad for p in control.router.parameters() if p.grad is not None]
    assert router_grads and any(float(g.abs().sum()) > 0 for g in router_grads)
    assert metrics["lm_loss"] > 0


def test_adapter_control_full_generation_with_caches_equals_recompute_and_forward(make_mot):
    control = make_mot(randomise=True, peers="adapter", gate=0.5)
    experts = control.slot_experts([1, 0, 2])
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
    assert decoder.peers == []

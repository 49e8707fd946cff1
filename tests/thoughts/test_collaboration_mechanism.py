"""Interaction options measured on the composition task (issue "Collaboration that is real"): each keeps the
invariants -- zero gates give the primary exactly, no leakage, full generation with caches == recompute."""

from __future__ import annotations

import pytest
import torch

import mot.thoughts.model as mot_model
from mot.generation import GenerationParams
from mot.thoughts import FullDecoder, MoTConfig, encode_pair, recompute_next_logits
from mot.thoughts.interaction import InteractionLayer

from .helpers import fixed_routing

PROMPT = "# sum\n"
CODE = "def add(a, b):\n    total = a + b\n    return total\n"
OPTIONS = [
    {"peer_stack": "last"},
    {"peer_readout": "prediction"},
    {"interaction_scale": "values"},
    {"interaction_scale": "none"},
    {"interaction_position": "recency"},
    {"peer_visibility": "exact"},
]


def test_defaults_are_the_upstream_mechanism():
    cfg = MoTConfig()
    assert (cfg.peers, cfg.interaction_scale, cfg.peer_stack, cfg.peer_readout, cfg.interaction_position,
            cfg.gate_init) == ("routed", "keys_values", "same", "hidden", "none", 0.0)


def test_routing_weight_scaling_options():
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 8)
    out = {}
    for scale in ("keys_values", "values", "none"):
        torch.manual_seed(1)
        layer = InteractionLayer([8], 8, 2, scale=scale)
        out[scale] = [layer.peer_keys_values(0, hidden, torch.tensor([w])) for w in (1.0, 0.25)]
    k1, v1 = out["keys_values"][0]
    k, v = out["keys_values"][1]
    torch.testing.assert_close((k, v), (k1 * 0.25, v1 * 0.25))
    k, v = out["values"][1]
    torch.testing.assert_close((k, v), (k1, v1 * 0.25))
    k, v = out["none"][1]
    torch.testing.assert_close((k, v), (k1, v1))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_zero_gates_still_give_the_primary_exactly(make_mot, trio, options):
    mot = make_mot(randomise=True, gate=0.0, **options)
    out = mot([PROMPT], [CODE], routing=fixed_routing([[1, 0, 2]]))
    model, tok = trio[1]
    with torch.no_grad():
        hf = model(encode_pair(tok, PROMPT, CODE).input_ids[None]).logits[0]
    torch.testing.assert_close(out.logits[0], hf, atol=1e-5, rtol=0)


def test_open_gate_init_changes_the_output(make_mot, trio):
    mot = make_mot(gate_init=1.0)
    assert all(float(g.detach().min()) == 1.0 for layer in mot.interactions for g in layer.gates)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_no_leakage_with_the_option(make_mot, options):
    mot = make_mot(randomise=True, **options)
    rows = [[1, 0, 2]]
    for cut_in_code in (5, 13, 26):
        cut = len(PROMPT) + cut_in_code
        edited = CODE[:cut_in_code] + "zq(Xy  _k9!" + CODE[cut_in_code + 3:][::-1]
        outs = []
        for text in (CODE, edited):
            out = mot([PROMPT], [text], routing=fixed_routing(rows))
            keep = mot_model.known_ends(out.tokens[0]) <= cut
            outs.append((out.logits[0][keep], out.tokens[0].input_ids[keep]))
        (a, ids_a), (b, ids_b) = outs
        n = min(len(ids_a), len(ids_b))
        while n and not torch.equal(ids_a[:n], ids_b[:n]):
            n -= 1
        assert n >= 3
        torch.testing.assert_close(a[:n], b[:n], atol=1e-5, rtol=0)
    # and the interaction is not a no-op
    gated = mot([PROMPT], [CODE], routing=fixed_routing(rows)).logits[0]
    closed = make_mot(randomise=True, gate=0.0, **options)([PROMPT], [CODE], routing=fixed_routing(rows)).logits[0]
    assert (gated - closed).abs().max() > 1e-3


def test_recency_reads_the_latest_visible_peer_tokens_most():
    visible = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    dist = mot_model.peer_distance(visible)
    assert dist[2].tolist()[:3] == [2, 1, 0] and dist[1].tolist()[:2] == [1, 0] and dist[0, 0] == 0


@pytest.mark.parametrize("options", [{"peer_stack": "last"}, {"peer_readout": "prediction"},
                                     {"peer_visibility": "exact"}, {"interaction_position": "recency"},
                                     {"peer_visibility": "exact", "interaction_position": "recency"}],
                         ids=["last", "prediction", "exact", "recency", "exact-recency"])
def test_full_generation_equals_recompute_with_the_option(make_mot, options):
    mot = make_mot(randomise=True, **options)
    experts, weights = [1, 0, 2], torch.tensor([0.5, 0.3, 0.2])
    decoder = FullDecoder(mot, "def add(a, b):", experts, weights)
    logits = decoder.prefill()
    tokens: list[int] = []
    for _ in range(6):
        reference = recompute_next_logits(mot, "def add(a, b):", tokens, experts, weights)
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
        tokens.append(int(torch.argmax(reference)))
        decoder.accept(tokens[-1])
        logits = decoder.advance()


@pytest.mark.parametrize("visibility", ["stable", "exact"])
def test_recency_full_decoding_equals_the_forward_at_every_step(make_mot, visibility):
    """The recency bias in the incremental decoder reads the same distances as the teacher-forced forward:
    decoding the completion's own tokens gives the forward's logits at every step (training == decoding)."""
    mot = make_mot(randomise=True, interaction_position="recency", peer_visibility=visibility)
    experts, weights = [1, 0, 2], torch.tensor([0.5, 0.3, 0.2])
    out = mot([PROMPT], [CODE], routing=fixed_routing([experts], weights=[weights.tolist()]))
    tok = out.tokens[0]
    tokens = tok.input_ids[tok.num_prompt_tokens:].tolist()
    decoder = FullDecoder(mot, PROMPT, experts, weights)
    steps = [decoder.prefill()]
    for token in tokens[:-1]:
        decoder.accept(token)
        steps.append(decoder.advance())
    first = tok.num_prompt_tokens - 1
    torch.testing.assert_close(torch.stack(steps), out.logits[0][first:first + len(steps)], atol=1e-5, rtol=1e-5)
    assert (out.logits[0][first:] - out.logits[0][first:].mean()).abs().max() > 0  # not a constant
    assert mot.generate([PROMPT], GenerationParams(max_new_tokens=3), mode="full")


def test_exact_visibility_reads_the_peers_own_tokenisation_of_the_cut_text_without_lag(make_mot):
    """Oracle: a primary token under "exact" reads what the peer computes on ``text[:known_end]`` alone, so its
    logits equal those of a forward whose completion is cut right there."""
    mot = make_mot(randomise=True, peer_visibility="exact")
    rows = [[1, 0, 2]]
    full = mot([PROMPT], [CODE], routing=fixed_routing(rows))
    ends = mot_model.known_ends(full.tokens[0])
    checked = 0
    for i in range(full.tokens[0].num_prompt_tokens, len(full.tokens[0]), 3):
        cut = int(ends[i]) - len(PROMPT)
        part = mot([PROMPT], [CODE[:cut]], routing=fixed_routing(rows))
        n = len(part.tokens[0])
        if n == i + 1 and torch.equal(part.tokens[0].input_ids, full.tokens[0].input_ids[:n]):
            torch.testing.assert_close(part.logits[0][-1], full.logits[0][i], atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 5
    lagged = make_mot(randomise=True)([PROMPT], [CODE], routing=fixed_routing(rows))
    assert (lagged.logits[0] - full.logits[0]).abs().max() > 1e-3

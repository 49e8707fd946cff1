"""Per-sample target losses of the demo: each expert alone (read off the peer-state cache), the
router's choices, and the Mixture of Thoughts itself.

Every loss is a per-sample *total* negative log-likelihood (nats) of the target tokens and the
expert's end-of-sequence token after them -- the rows ``mot.thoughts.lm_loss`` scores.  Experts
tokenise differently, so per-token losses do not compare across experts; the report divides totals by
the target's UTF-8 bytes instead (nats per byte).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mot.thoughts.model import MixtureOfThoughts, MoTOutput
from mot.thoughts.peer_cache import PeerStateCache
from mot.thoughts.training import MoTTrainTask, target_rows

Progress = Callable[[int], None]


def _target_nll(tokens: Any, eos: int | None, logits_at: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[float, int]:
    """Total NLL over a sample's target rows; ``logits_at(rows)`` gives the logits ``[R, V]`` of those rows."""
    rows = target_rows(tokens, eos)
    if rows.numel() == 0:
        return 0.0, 0
    labels = tokens.input_ids[1:]
    if eos is not None:
        labels = torch.cat([labels, labels.new_tensor([eos])])
    logits = logits_at(rows)
    nll = F.cross_entropy(logits.float(), labels[rows].to(logits.device), reduction="sum")
    return float(nll), int(rows.numel())


def expert_nll(model: MixtureOfThoughts, cache: PeerStateCache, samples: Sequence[Any],
               advance: Progress | None = None, chunk: int = 16) -> tuple[list[list[float]], list[list[int]]]:
    """``(nll[sample][expert], tokens[sample][expert])`` of every expert alone.

    The cache holds each expert's output of its last stack (its last decoder layer) for every sample,
    so an expert's own loss costs only its final norm and LM head on the target rows -- run on the
    target rows of ``chunk`` samples at once (the head of a 262k vocabulary is 0.7 GB to read)."""
    nll = [[0.0] * model.num_experts for _ in samples]
    count = [[0] * model.num_experts for _ in samples]
    with torch.no_grad():
        for start in range(0, len(samples), chunk):
            part = range(start, min(start + chunk, len(samples)))
            for e, adapter in enumerate(model.adapters):
                eos = adapter.tokenizer.eos_token_id
                found = []
                for i in part:
                    states = cache.states(e, samples[i].prompt, samples[i].target)
                    if states is None:
                        raise RuntimeError(f"peer cache lacks expert {e} on a sample: build it first")
                    found.append((i, states, target_rows(states.tokens, eos)))
                rows = torch.cat([st.hidden[-1][r] for _, st, r in found]).to(adapter.device)
                logits = adapter.logits(rows.unsqueeze(0))[0] if rows.shape[0] else rows
                offset = 0
                for i, states, r in found:
                    block = logits[offset:offset + r.numel()]
                    offset += r.numel()
                    nll[i][e], count[i][e] = _target_nll(states.tokens, eos, lambda _rows, block=block: block)
            if advance is not None:
                advance(len(part))
    return nll, count


def cached_features(model: MixtureOfThoughts, cache: PeerStateCache, prompts: Sequence[str]) -> torch.Tensor:
    feats = cache.features(prompts)
    return model.features(prompts) if feats is None else feats.to(next(model.router.parameters()).dtype)


def warm_start_router(model: MixtureOfThoughts, features: torch.Tensor, labels: torch.Tensor, steps: int = 300,
               lr: float = 1e-2, seed: int = 0) -> float:
    """Warm-start the router: cross-entropy towards each training sample's best expert (lowest loss).

    Under the MoT objective alone the router learns which primary is best only through the peers'
    routing weights, which start with no effect (interaction gates start at zero); this supervised
    step, on features and losses already cached, gives it a sensible primary from the first step.
    Returns the final loss."""
    router = model.router
    was_training = router.training
    router.train()
    optim = torch.optim.Adam(router.parameters(), lr=lr)
    loss = torch.zeros(())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            optim.zero_grad(set_to_none=True)
            loss = F.cross_entropy(router(features).logits.float(), labels)
            loss.backward()
            optim.step()
    router.train(was_training)
    return float(loss.detach())


def route(model: MixtureOfThoughts, features: torch.Tensor) -> list[int]:
    """The router's primary expert for each row of ``features`` (eval mode: deterministic)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        primary = model.router(features).primary.tolist()
    model.train(was_training)
    return [int(p) for p in primary]


def mot_nll(task: MoTTrainTask, samples: Sequence[Any], batch_size: int = 4,
            advance: Progress | None = None) -> tuple[list[float], list[int], list[int]]:
    """``(nll, tokens, primary)`` per sample of the MoT (eval mode, peers read from the cache)."""
    model = task.model
    was_training = model.training
    model.eval()
    nll: list[float] = []
    count: list[int] = []
    primary: list[int] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                prompts, targets = [s.prompt for s in chunk], [s.target for s in chunk]
                routing = model.router(task.features(prompts))
                output: MoTOutput = model(prompts, targets, routing=routing,
                                          peer_states=task.peer_states(prompts, targets, [routing]))
                for b in range(len(chunk)):
                    logits = output.logits[b]
                    value, n = _target_nll(output.tokens[b], output.eos_token_ids[b],
                                           lambda rows, logits=logits: logits[rows])
                    nll.append(value)
                    count.append(n)
                    primary.append(int(output.primary[b]))
                if advance is not None:
                    advance(len(chunk))
    finally:
        model.train(was_training)
    return nll, count, primary

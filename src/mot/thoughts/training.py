"""``MoTTrainTask``: a Mixture of Thoughts as a ``mot.training.TrainTask``.

Objective of one batch (weights from ``MoTConfig``: ``entropy_weight``, ``balance_weight``,
``lambda_consistency``; defaults 0.01, 0.01, 0.05)::

    L = L_lm + w_ent * L_entropy + w_bal * L_balance + lambda * L_consistency

- ``L_lm``: next-token cross-entropy of the primary expert on the target tokens only (the primary's
  EOS after the target included; prompt tokens and padding excluded), a mean over the batch's
  target tokens (``mot.thoughts.lm_loss``).
- ``L_entropy`` (negative routing entropy) and ``L_balance`` (load balancing) of the router's
  decision (``mot.routing``).
- ``L_consistency``: the symmetric KL between the model's output distributions under two routing
  perturbations (two stochastic router passes in train mode: dropout, routing noise or Gumbel
  samples), on target tokens only.  Distributions are comparable only where both passes chose the
  same primary (same vocabulary, same tokens); other samples do not contribute, and
  ``consistency_agree`` reports the share that did.  When the two decisions are identical the term
  is exactly 0 and the second pass is skipped.

Parameter groups: ``router`` (lr x2), ``interaction`` (the attention and gates of the interaction
layers, x1) and ``aux`` (the per-expert norms and projections into and out of the shared space,
x0.5); ``TrainingConfig.lr_scales`` overrides them by name.  The frozen experts are in no group,
stay in eval mode (``MixtureOfThoughts.train`` keeps them there) and are not checkpointed:
``fingerprint()`` names them, so a checkpoint trained over other experts is refused.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mot.routing import RoutingDecision, entropy_loss, load_balancing_loss, symmetric_kl
from mot.thoughts.alignment import TokenSpans, encode_pair
from mot.thoughts.data import TextPair
from mot.thoughts.model import MixtureOfThoughts, MoTOutput, PeerStates, lm_loss

DEFAULT_LR_SCALES = {"router": 2.0, "interaction": 1.0, "aux": 0.5}
_AUX_PARTS = ("norms.", "to_shared.", "from_shared.")


def target_rows(tokens: TokenSpans, eos: int | None, include_eos: bool = True) -> torch.Tensor:
    """Positions of a primary's logits that predict target tokens (and the EOS after them): the same
    rows ``lm_loss`` scores."""
    rows = torch.arange(tokens.num_prompt_tokens - 1, len(tokens) - 1)
    if include_eos and eos is not None:
        rows = torch.cat([rows, rows.new_tensor([len(tokens) - 1])])
    return rows


def count_target_tokens(output: MoTOutput) -> int:
    return sum(int(target_rows(t, e).numel()) for t, e in zip(output.tokens, output.eos_token_ids, strict=True))


def consistency_loss(first: MoTOutput, second: MoTOutput) -> tuple[torch.Tensor, float]:
    """Symmetric KL between two outputs' distributions on target tokens, averaged over the target tokens
    of the samples whose primary is the same in both; returns ``(loss, share of samples compared)``."""
    total, count, agree = None, 0, 0
    for b, (pa, pb) in enumerate(zip(first.primary, second.primary, strict=True)):
        if pa != pb:
            continue
        agree += 1
        rows = target_rows(first.tokens[b], first.eos_token_ids[b]).to(first.logits[b].device)
        if rows.numel() == 0:
            continue
        kl = symmetric_kl(first.rows(b, rows), second.rows(b, rows)) * rows.numel()
        total = kl if total is None else total + kl
        count += int(rows.numel())
    share = agree / max(len(first.primary), 1)
    if total is None:
        return first.logits[0].sum() * 0.0, share
    return total / count, share


def _same_decision(a: RoutingDecision, b: RoutingDecision) -> bool:
    return torch.equal(a.indices, b.indices) and torch.equal(a.weights.detach(), b.weights.detach())


def collect_peer_states(model: MixtureOfThoughts, prompts: Sequence[str], targets: Sequence[str],
                        decisions: Sequence[RoutingDecision], cache: Any = None,
                        given: Sequence[dict[int, PeerStates]] | None = None,
                        primaries: bool = False) -> list[dict[int, PeerStates]]:
    """States of every peer any of ``decisions`` activates, per sample: from ``given``, then ``cache``
    (a ``PeerStateCache``), else computed (once per sample and expert, batched per expert).

    ``primaries``: also the primaries' own states when the cache has them (never computed: they
    only let the primary skip its first stack, see ``MixtureOfThoughts.forward``)."""
    needed: list[set[int]] = [set() for _ in prompts]
    for decision in decisions:
        for b, row in enumerate(decision.indices.tolist()):
            needed[b].update(model.peer_experts(row))
    out: list[dict[int, PeerStates]] = [dict(given[b]) if given is not None else {} for b in range(len(prompts))]
    if primaries and cache is not None:
        for decision in decisions:
            for b, primary in enumerate(decision.primary.tolist()):
                if primary not in out[b] and primary not in needed[b]:
                    found = cache.states(primary, prompts[b], targets[b])
                    if found is not None:
                        out[b][primary] = found
    missing: dict[int, list[int]] = defaultdict(list)
    for b, experts in enumerate(needed):
        for expert in sorted(experts):
            if expert in out[b]:
                continue
            found = cache.states(expert, prompts[b], targets[b]) if cache is not None else None
            if found is None:
                missing[expert].append(b)
            else:
                out[b][expert] = found
    for expert, rows in missing.items():
        computed = model.compute_peer_states(expert, [prompts[b] for b in rows], [targets[b] for b in rows])
        for b, states in zip(rows, computed, strict=True):
            out[b][expert] = states
    return out


def mot_objective(model: MixtureOfThoughts, prompts: Sequence[str], targets: Sequence[str], *,
                  features: torch.Tensor | None = None,
                  peer_states: Sequence[dict[int, PeerStates]] | Callable[[list[RoutingDecision]], Any] | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float], RoutingDecision, MoTOutput]:
    """The training objective of one batch (module docstring): ``(loss, metrics, routing, output)``.

    ``features``: router features (default: ``model.features(prompts)``).  ``peer_states``: per-sample
    ``{expert: PeerStates}`` (missing ones are computed), or a function of the routing decisions that
    returns them (how ``MoTTrainTask`` reads its peer cache).  In train mode with
    ``lambda_consistency > 0`` the router runs twice; the second pass only costs a second forward when
    its decision differs.
    """
    prompts, targets = list(prompts), list(targets)
    cfg = model.config
    if features is None:
        features = model.features(prompts)
    routing = model.router(features)
    second = None
    if model.training and cfg.lambda_consistency > 0:
        second = model.router(features)
        if _same_decision(routing, second):
            second = None
    decisions = [routing] if second is None else [routing, second]
    if callable(peer_states):
        peers = peer_states(decisions)
    else:
        peers = collect_peer_states(model, prompts, targets, decisions, given=peer_states)
    output = model(prompts, targets, routing=routing, peer_states=peers, target_logits_only=True)
    lm = lm_loss(output)
    entropy = entropy_loss(routing.probs)
    balance = load_balancing_loss(routing.probs, routing.indices)
    total = lm + cfg.entropy_weight * entropy + cfg.balance_weight * balance
    if second is not None:
        consistency, agree = consistency_loss(output, model(prompts, targets, routing=second, peer_states=peers,
                                                            target_logits_only=True))
        total = total + cfg.lambda_consistency * consistency
    else:
        consistency, agree = lm.new_zeros(()), 1.0
    metrics = {"lm_loss": float(lm.detach()), "entropy": float(entropy.detach()),
               "balance": float(balance.detach()), "consistency": float(consistency.detach()),
               "consistency_agree": agree, "tokens": float(sum(len(t) for t in output.tokens)),
               "target_tokens": float(count_target_tokens(output))}
    return total, metrics, routing, output


def training_loss(model: MixtureOfThoughts, prompts: Sequence[str], completions: Sequence[str],
                  peer_states: Sequence[dict[int, PeerStates]] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The full training objective of one batch and its metrics (floats):
    ``lm_loss + entropy_weight * entropy + balance_weight * balance + lambda_consistency * consistency``,
    where ``consistency`` is the symmetric KL between the output distributions of two stochastic
    routing passes (train mode) -- exactly what ``MoTTrainTask.loss`` computes."""
    total, metrics, _, _ = mot_objective(model, prompts, completions, peer_states=peer_states)
    return total, metrics


def _batch_fields(batch: Any) -> tuple[list[str], list[str]]:
    if isinstance(batch, dict):
        return list(batch["prompts"]), list(batch["targets"])
    raise TypeError(f"MoTTrainTask expects batches made by its collate(), got {type(batch).__name__}")


class MoTTrainTask:
    """Train the router and interaction layers of ``model`` (a ``MixtureOfThoughts``).

    ``peer_cache``: a ``PeerStateCache`` whose states and router features are used when present
    (anything missing is computed).  ``cache_primary``: also read the primary's own states after its
    first stack from the cache (they depend on the input only), so a step skips ``1/num_stacks`` of
    the primary's layers; equal to running them within float rounding (the cache was computed with
    other padding; with a float16/bfloat16 cache, within its precision).  ``generation_samples``: greedy generation metrics (BLEU,
    chrF, ROUGE-L, exact match, edit similarity) on the first N validation pairs in ``evaluate``.
    """

    def __init__(self, model: MixtureOfThoughts, *, lr_scales: dict[str, float] | None = None,
                 peer_cache: Any = None, generation_samples: int = 0, max_new_tokens: int = 128,
                 generation_mode: str = "fast", stop: Sequence[str] | None = None, cache_primary: bool = False):
        self.module = model
        self.cache_primary = cache_primary
        self.lr_scales = {**DEFAULT_LR_SCALES, **(lr_scales or {})}
        self.peer_cache = peer_cache
        self.generation_samples = generation_samples
        self.max_new_tokens = max_new_tokens
        self.generation_mode = generation_mode
        self.stop = list(stop) if stop is not None else ["###", "\nQuestion:"]
        self._fingerprint: dict[str, str] | None = None

    @property
    def model(self) -> MixtureOfThoughts:
        return self.module

    # -- TrainTask ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        groups: dict[str, list[torch.nn.Parameter]] = {"router": [], "interaction": [], "aux": []}
        for name, param in self.module.named_parameters():
            if not param.requires_grad or name.startswith("experts."):
                continue
            if name.startswith("router."):
                groups["router"].append(param)
            elif name.startswith("interactions.") and any(f".{part}" in name for part in _AUX_PARTS):
                groups["aux"].append(param)
            elif name.startswith("interactions."):
                groups["interaction"].append(param)
            else:  # anything else a subclass adds trains as an auxiliary part
                groups["aux"].append(param)
        return [{"name": n, "params": p, "lr_scale": self.lr_scales[n]} for n, p in groups.items()]

    def collate(self, items: Sequence[Any]) -> dict[str, list[str]]:
        prompts, targets = [], []
        for item in items:
            if isinstance(item, TextPair):
                prompts.append(item.prompt)
                targets.append(item.target)
            elif isinstance(item, dict):
                prompts.append(item["prompt"])
                targets.append(item["target"] if "target" in item else item["completion"])
            else:
                prompt, target = item
                prompts.append(prompt)
                targets.append(target)
        return {"prompts": prompts, "targets": targets}

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        prompts, targets = _batch_fields(batch)
        total, metrics, routing, _ = mot_objective(
            self.module, prompts, targets, features=self.features(prompts),
            peer_states=lambda decisions: self.peer_states(prompts, targets, decisions))
        metrics.update(self.routing_fractions(routing))
        return total, metrics

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.trainable_state_dict()

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_trainable_state_dict(state_dict)

    def fingerprint(self) -> dict[str, str]:
        """Each frozen expert's weight fingerprint and the router's encoder."""
        if self._fingerprint is None:
            from mot.experts.fingerprint import model_fingerprint

            fp = {f"expert_{i}": model_fingerprint(m) for i, m in enumerate(self.module.experts)}
            fp["encoder"] = str(getattr(self.module.encoder, "name", type(self.module.encoder).__name__))
            self._fingerprint = fp
        return dict(self._fingerprint)

    def save_artifacts(self, directory: str | Path) -> None:
        """The model's own ``save_pretrained`` files (``config.json``, ``model.safetensors``) in
        ``directory``, so a checkpoint loads with ``MixtureOfThoughts.from_pretrained``."""
        directory = Path(directory)
        staging = self.module.save_pretrained(directory / "mot-pretrained")
        for item in staging.iterdir():
            item.replace(directory / item.name)
        shutil.rmtree(staging, ignore_errors=True)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """``val_loss`` (token-weighted target cross-entropy, deterministic routing) and, with
        ``generation_samples``, greedy generation metrics on the first pairs."""
        model = self.module
        nll, tokens = 0.0, 0
        routed: dict[int, int] = defaultdict(int)
        samples = 0
        gen_prompts: list[str] = []
        gen_refs: list[str] = []
        for batch in batches:
            prompts, targets = _batch_fields(batch)
            routing = model.router(self.features(prompts))
            output = model(prompts, targets, routing=routing,
                           peer_states=self.peer_states(prompts, targets, [routing]))
            n = count_target_tokens(output)
            nll += float(lm_loss(output)) * n
            tokens += n
            for p in output.primary:
                routed[p] += 1
            samples += len(prompts)
            room = self.generation_samples - len(gen_prompts)
            if room > 0:
                gen_prompts += prompts[:room]
                gen_refs += targets[:room]
        metrics = {"val_loss": nll / max(tokens, 1)}
        metrics.update({f"val_routing/expert_{i}": routed[i] / max(samples, 1) for i in range(model.num_experts)})
        if gen_prompts:
            metrics.update(self.generation_metrics(gen_prompts, gen_refs))
        return metrics

    def generation_metrics(self, prompts: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        from mot.evaluation.code_metrics import bleu4, chrf, edit_similarity, exact_match, rouge_l
        from mot.generation import GenerationParams

        params = GenerationParams(max_new_tokens=self.max_new_tokens, temperature=0.0, stop=self.stop)
        predictions = [p.strip() for p in self.module.generate(list(prompts), params, mode=self.generation_mode)]
        refs = [r.strip() for r in references]
        return {"bleu": bleu4(predictions, refs), "chrf": chrf(predictions, refs), "rouge_l": rouge_l(predictions, refs),
                "exact_match": exact_match(predictions, refs), "edit_similarity": edit_similarity(predictions, refs)}

    # -- helpers ------------------------------------------------------------------------------------
    def features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Router features, from the peer cache when it has them all."""
        model = self.module
        if self.peer_cache is not None:
            cached = self.peer_cache.features(prompts)
            if cached is not None:
                return cached.to(device=model.device, dtype=next(model.router.parameters()).dtype)
        return model.features(prompts)

    def peer_states(self, prompts: Sequence[str], targets: Sequence[str],
                    decisions: Sequence[RoutingDecision]) -> list[dict[int, PeerStates]]:
        """States of every peer any of ``decisions`` activates, per sample: cached or computed once."""
        return collect_peer_states(self.module, prompts, targets, decisions, cache=self.peer_cache,
                                   primaries=self.cache_primary)

    def routing_fractions(self, routing: RoutingDecision) -> dict[str, float]:
        """``routing/expert_i``: share of the batch whose primary is expert ``i``."""
        counts = torch.bincount(routing.primary.detach().cpu(), minlength=self.module.num_experts)
        n = max(int(routing.primary.numel()), 1)
        return {f"routing/expert_{i}": float(c) / n for i, c in enumerate(counts.tolist())}


def expert_lm_loss(model: MixtureOfThoughts, expert: int, pairs: Sequence[Any], batch_size: int = 8) -> float:
    """One expert alone on ``pairs``: token-weighted cross-entropy of its targets (+ its EOS), the same
    rows ``lm_loss`` scores, from the HF model's own forward (right padding, which a causal model
    ignores).  The baseline a trained MoT's ``val_loss`` is compared with."""
    adapter = model.adapters[expert]
    tokenizer = adapter.tokenizer
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            toks = [encode_pair(tokenizer, p.prompt, p.target) for p in chunk]
            width = max(len(t) for t in toks)
            ids = torch.full((len(toks), width), pad, dtype=torch.long)
            mask = torch.zeros((len(toks), width), dtype=torch.long)
            for r, t in enumerate(toks):
                ids[r, :len(t)] = t.input_ids
                mask[r, :len(t)] = 1
            logits = adapter.model(input_ids=ids.to(adapter.device), attention_mask=mask.to(adapter.device)).logits
            for r, t in enumerate(toks):
                rows = target_rows(t, eos)
                labels = t.input_ids[1:]
                if eos is not None:
                    labels = torch.cat([labels, labels.new_tensor([eos])])
                if rows.numel() == 0:
                    continue
                nll += float(F.cross_entropy(logits[r, rows].float(), labels[rows].to(logits.device), reduction="sum"))
                count += int(rows.numel())
    return nll / max(count, 1)

"""The curriculum's training stages as ``TrainTask``s for the shared Trainer.

Stage 1: teacher-forced cross-entropy, every head at every decoding step (labels shifted by ``1 + h``).
Stage 2: as training progresses from 0 to 1, each example keeps the dataset's tokens as targets with
probability ``1 - progress`` (teacher forcing) and otherwise learns the backbone's own greedy chain
(self-distillation: what verification accepts), and the number of active heads anneals from ``H`` to
``k_max``.  The greedy chain comes from the same teacher-forced pass (:func:`chain_targets`: exact wherever
the sequence pins it down) or, when generated continuations are attached, from the backbone's own greedy
text (every target known, at the cost of generating it).  Only the router's active heads get the
cross-entropy.  The router learns, per head, whether its draft would be accepted (BCE against "every head
up to this one matched"), plus load-balancing, entropy and budget losses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mot.io import atomic_file, write_json
from mot.multitoken.data import SequenceDataset, chain_targets, collate_sequences, read_tokens, step_targets
from mot.multitoken.model import MultiTokenModel, active_heads
from mot.routing import budget_loss, entropy_loss, load_balancing_loss

__all__ = ["MultiTokenTask", "active_count", "choose_draft_vocab", "greedy_continuations"]


def active_count(num_heads: int, k_max: int, progress: float) -> int:
    """Active heads at ``progress`` in [0, 1] of stage 2: ``H`` at the start, ``k_max`` at the end."""
    progress = min(max(progress, 0.0), 1.0)
    return int(round(num_heads - (num_heads - k_max) * progress))


def _accepted_chain(correct: torch.Tensor) -> torch.Tensor:
    """``[N, H]`` 0/1: head 0 always (the backbone's own token); head h when heads 1..h are all correct."""
    chain = correct.clone().float()
    chain[:, 0] = 1.0
    return chain.cumprod(dim=-1)


class MultiTokenTask:
    """Stage 1 or 2 of the curriculum over ``model`` (a TrainTask: the Trainer trains ``model.heads``)."""

    def __init__(self, model: MultiTokenModel, stage: int, *, metadata: Callable[[Path], None] | None = None,
                 fingerprint: dict[str, str] | None = None, cache_hidden: bool = False):
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if model.config.num_heads < 2:
            raise ValueError("training needs at least 2 heads (head 0 is the backbone's own LM head)")
        self.model = model
        self.module = model.heads
        self.stage = stage
        self.progress: Callable[[], float] = lambda: 0.0
        self._metadata = metadata
        self._fingerprint = fingerprint or {}
        self.pad_id = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
        # The backbone is frozen and deterministic, so a sequence's hidden states never change: with
        # cache_hidden each distinct sequence runs through the backbone once, not once per epoch.
        self.hidden_cache: dict[bytes, torch.Tensor] | None = {} if cache_hidden else None

    # -------------------------------------------------------------------------------- TrainTask protocol

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "heads", "params": self.module.head_parameters(), "lr_scale": 1.0},
            {"name": "router", "params": list(self.module.router.parameters()), "lr_scale": 1.0},
        ]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)

    def fingerprint(self) -> dict[str, str]:
        return {**self._fingerprint, "stage": str(self.stage)}

    def save_artifacts(self, directory: Path) -> None:
        if self._metadata is not None:
            self._metadata(Path(directory))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_sequences(items, self.pad_id)

    # ------------------------------------------------------------------------------------------- losses

    def _pick_rows(self, batch: dict[str, torch.Tensor]):
        """``(ids, attention, response, use_data [B], teacher_forcing)``.  Stage 2: each row keeps the data's
        targets with the teacher-forcing probability; the others learn the greedy chain, on their greedy
        continuation when one is attached."""
        ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        if self.stage == 1:
            return ids, attention, response, torch.ones(ids.shape[0], dtype=torch.bool), 1.0
        teacher_forcing = 1.0 - min(max(self.progress(), 0.0), 1.0)
        use_data = torch.rand(ids.shape[0]) < teacher_forcing
        if "greedy_ids" in batch:
            pick = use_data.to(ids.device)[:, None]
            ids = torch.where(pick, ids, batch["greedy_ids"])
            attention = torch.where(pick, attention, batch["greedy_attention_mask"])
            response = torch.where(pick, response, batch["greedy_response_mask"])
        return ids, attention, response, use_data, teacher_forcing

    def _hidden(self, ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states ``[B, T, D]`` and its greedy guess at every position ``[B, T]``."""
        if self.hidden_cache is None:
            hidden, logits, _ = self.model.backbone_step(ids, attention_mask=attention, use_cache=False)
            return hidden, logits.argmax(-1).to(hidden.device)
        lengths = attention.sum(1).tolist()
        keys = [ids[b, :n].cpu().numpy().tobytes() for b, n in enumerate(lengths)]
        missing = [b for b, key in enumerate(keys) if key not in self.hidden_cache]
        if missing:
            fresh, logits, _ = self.model.backbone_step(ids[missing], attention_mask=attention[missing],
                                                        use_cache=False)
            guesses = logits.argmax(-1).to(fresh.device)
            for row, b in enumerate(missing):
                self.hidden_cache[keys[b]] = (fresh[row, : lengths[b]].detach(), guesses[row, : lengths[b]])
        first = self.hidden_cache[keys[0]][0]
        hidden = torch.zeros(ids.shape[0], ids.shape[1], self.module.hidden_size, device=self.model.heads_device,
                             dtype=first.dtype)
        greedy = torch.zeros(ids.shape, dtype=torch.long, device=self.model.heads_device)
        for b, key in enumerate(keys):
            states, guesses = self.hidden_cache[key]
            hidden[b, : lengths[b]] = states
            greedy[b, : lengths[b]] = guesses
        return hidden, greedy

    def _targets(self, ids, response, greedy, use_data: torch.Tensor | None):
        """``(step_mask [B, T], labels [B, T, H])``: rows with ``use_data`` learn the data's tokens (teacher
        forcing), the others (all when ``use_data`` is None) the backbone's greedy chain (:func:`chain_targets`)."""
        num_heads = self.module.num_heads
        if use_data is not None and bool(use_data.all()):  # teacher forcing throughout (stage 1): no chain
            return step_targets(ids, response, num_heads)
        step_mask, labels = chain_targets(ids.to(greedy.device), greedy, response, num_heads,
                                          self.model.eos_token_ids)
        if use_data is not None and bool(use_data.any()):
            _, data_labels = step_targets(ids, response, num_heads)
            labels = torch.where(use_data.to(labels.device)[:, None, None], data_labels.to(labels.device), labels)
        return step_mask, labels

    def _forward(self, ids, attention, response, use_data: torch.Tensor | None = None):
        """Step states ``[N, D]``, labels ``[N, H]``, per head ``h`` the backbone's own state at ``t + h``
        (``[N, H, D]``, row 0 unused: what the LM head turns into the backbone's guess for ``t + 1 + h``),
        and for draft-layer heads each step's output at the steps (``[N, D]`` per head 1..H-1; else None)."""
        heads = self.module
        full, greedy = self._hidden(ids, attention)
        full = full.to(heads.lm_weight.dtype)
        step_mask, labels = self._targets(ids, response, greedy, use_data)
        labels = labels.to(full.device)
        select = step_mask.to(full.device)
        steps = None
        if heads.layer is not None:
            # step 1 reads the sequence's own next token (the pairs every later position attends to); step
            # s >= 2 reads the token step s - 1 should have drafted (what a kept chain has fed it)
            tokens = torch.zeros(*labels.shape[:2], heads.num_heads - 1, dtype=torch.long, device=full.device)
            tokens[:, :-1, 0] = ids[:, 1:].to(full.device)
            tokens[..., 1:] = labels[..., 1:-1].clamp_min(0)
            outputs = heads.layer.unrolled(full, F.embedding(tokens, heads.embed_weight), heads.num_heads - 1,
                                           attention_mask=attention.to(full.device))
            steps = [output[select] for output in outputs]
        hidden = full[select]  # [N, D]
        labels = labels[select]  # [N, H]
        future = [hidden]
        for head in range(1, heads.num_heads):
            shifted = torch.zeros_like(full)
            shifted[:, : full.shape[1] - head] = full[:, head:]
            future.append(shifted[select])
        return hidden, labels, torch.stack(future, dim=1), steps

    def _scored_logits(self, hidden: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor, head: int,
                       steps: list[torch.Tensor] | None = None):
        """``(steps, logits, targets)`` of ``head`` at the steps whose target is in the heads' vocabulary
        (``rows`` from ``vocab_rows``): only those steps pay for the vocabulary projection.  ``logits`` is
        None when there are none.  ``steps``: the draft layer's outputs (from :meth:`_forward`)."""
        heads = self.module
        scored = (rows[:, head] >= 0).nonzero()[:, 0]
        if scored.numel() == 0:
            return scored, None, None
        if steps is not None:
            return scored, heads._project(steps[head - 1][scored], *heads._output(head)), rows[scored, head]
        return scored, heads.head_logits(hidden[scored], head, tokens[scored]), rows[scored, head]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        heads = self.module
        num_heads, cfg = heads.num_heads, heads.config
        ids, attention, response, use_data, teacher_forcing = self._pick_rows(batch)
        hidden, labels, future, steps = self._forward(ids, attention, response, use_data)
        metrics: dict[str, float] = {"tokens": float(hidden.shape[0])}
        k = num_heads if self.stage == 1 else active_count(num_heads, cfg.k_max, self.progress())
        scores = heads.router_scores(hidden.detach())
        active = torch.zeros_like(labels, dtype=torch.bool)
        active.scatter_(1, active_heads(scores.detach(), k), True)

        loss = hidden.new_zeros(())
        if cfg.feature_weight > 0:
            feature_total, trained = hidden.new_zeros(()), 0
            for head in range(1, num_heads):
                use = (labels[:, head] >= 0) & active[:, head]
                if use.any():
                    state = (steps[head - 1][use] if steps is not None
                             else heads.head_state(hidden[use], head, read_tokens(labels[use])))
                    feature = F.smooth_l1_loss(state, future[use, head])
                    feature_total, trained = feature_total + feature, trained + 1
                    metrics[f"feature/head_{head}"] = feature.item()
            loss = loss + cfg.feature_weight * feature_total / max(trained, 1)

        # The vocabulary projection dominates the cost: optionally on a random subset of the steps.
        if cfg.train_positions is not None and hidden.shape[0] > cfg.train_positions:
            pick = torch.randperm(hidden.shape[0])[: cfg.train_positions].to(hidden.device)
            hidden, labels, active, scores = hidden[pick], labels[pick], active[pick], scores[pick]
            steps = None if steps is None else [output[pick] for output in steps]
        correct = torch.zeros_like(labels, dtype=torch.bool)
        correct[:, 0] = True
        rows = heads.vocab_rows(labels)  # targets as rows of the heads' (draft) vocabulary
        ce_total, trained = hidden.new_zeros(()), 0
        tokens = read_tokens(labels)
        for head in range(1, num_heads):
            valid = labels[:, head] >= 0
            metrics[f"targets/head_{head}"] = valid.float().mean().item() if len(valid) else 0.0
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.ce_weight > 0):
                scored, logits, target = self._scored_logits(hidden, tokens, rows, head, steps)
            if logits is None:
                metrics[f"acc/head_{head}"] = 0.0
                continue
            with torch.no_grad():
                correct[scored, head] = logits.argmax(-1) == target
                metrics[f"acc/head_{head}"] = correct[valid, head].float().mean().item() if valid.any() else 0.0
            use = active[scored, head]
            if use.any() and cfg.ce_weight > 0:
                ce = F.cross_entropy(logits[use], target[use])
                ce_total, trained = ce_total + ce, trained + 1
                metrics[f"ce/head_{head}"] = ce.item()
        ce_loss = ce_total / max(trained, 1)
        accepted = _accepted_chain(correct)
        metrics["ce"] = ce_loss.item()
        metrics["est_tokens_per_pass"] = (
            (accepted * active.float().cumprod(-1)).sum(-1).mean().item() if len(accepted) else 0.0)
        loss = loss + cfg.ce_weight * ce_loss
        if self.stage == 2:
            gates = torch.sigmoid(scores)
            probs = scores.softmax(-1)
            indices = active_heads(scores.detach(), k)
            bce = F.binary_cross_entropy_with_logits(scores, accepted)
            balance = load_balancing_loss(probs, indices)
            entropy = entropy_loss(probs)
            budget = budget_loss(gates, float(k))
            loss = (loss + cfg.bce_weight * bce + cfg.balance_weight * balance + cfg.entropy_weight * entropy
                    + cfg.budget_weight * budget)
            metrics.update({"router/bce": bce.item(), "router/balance": balance.item(),
                            "router/entropy": entropy.item(), "router/budget": budget.item(),
                            "teacher_forcing": teacher_forcing, "active_heads": float(k)})
            share = F.one_hot(indices, num_heads).sum(1).float().mean(0) / k
            for head in range(num_heads):
                metrics[f"routing/expert_{head}"] = share[head].item()
        return loss, metrics

    def _scored_ce(self, hidden, labels, outputs) -> tuple[float, int, torch.Tensor]:
        """(summed CE, number of scored targets, ``correct [N, H]``) of every head on ``labels``."""
        heads = self.module
        correct = torch.zeros_like(labels, dtype=torch.bool)
        correct[:, 0] = True
        rows = heads.vocab_rows(labels)
        tokens = read_tokens(labels)
        ce_sum, ce_count = 0.0, 0
        for head in range(1, heads.num_heads):
            scored, logits, target = self._scored_logits(hidden, tokens, rows, head, outputs)
            if logits is None:
                continue
            correct[scored, head] = logits.argmax(-1) == target
            ce_sum += F.cross_entropy(logits, target, reduction="sum").item()
            ce_count += scored.numel()
        return ce_sum, ce_count, correct

    def evaluate(self, batches) -> dict[str, float]:
        """Validation: ``val_loss`` is the CE per scored target of the heads on what this stage trains them
        on -- stage 1: the data's next tokens (teacher forcing); stage 2: the backbone's greedy chain (on its
        greedy continuations when attached) -- and NaN, never 0, when no target could be scored.  Per-head
        acceptance along the chain and the estimate of tokens per backbone pass come from the greedy chain
        (on the data, a step whose chain the data does not pin down counts as rejected: a lower bound)."""
        heads = self.module
        num_heads = heads.num_heads
        k = num_heads if self.stage == 1 else heads.config.k_max
        ce_sum, ce_count = 0.0, 0
        accepted_sum = torch.zeros(num_heads)
        steps = 0
        for batch in batches:
            if self.stage == 1:  # the loss on the data's targets, as stage 1 trains
                ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
                data_rows = torch.ones(ids.shape[0], dtype=torch.bool)
                hidden, labels, _, outputs = self._forward(ids, attention, response, data_rows)
                if hidden.shape[0]:
                    batch_sum, batch_count, _ = self._scored_ce(hidden, labels, outputs)
                    ce_sum, ce_count = ce_sum + batch_sum, ce_count + batch_count
            if "greedy_ids" in batch:
                ids, attention, response = batch["greedy_ids"], batch["greedy_attention_mask"], batch["greedy_response_mask"]
            else:
                ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            hidden, labels, _, outputs = self._forward(ids, attention, response)
            if hidden.shape[0] == 0:
                continue
            batch_sum, batch_count, correct = self._scored_ce(hidden, labels, outputs)
            if self.stage == 2:
                ce_sum, ce_count = ce_sum + batch_sum, ce_count + batch_count
            active = torch.zeros_like(labels, dtype=torch.bool)
            active.scatter_(1, active_heads(heads.router_scores(hidden), k), True)
            accepted_sum += (_accepted_chain(correct) * active.float().cumprod(-1)).sum(0).cpu()
            steps += hidden.shape[0]
        metrics = {"val_loss": ce_sum / ce_count if ce_count else float("nan"),
                   "val_est_tokens_per_pass": accepted_sum.sum().item() / max(steps, 1)}
        for head in range(1, num_heads):
            metrics[f"val_accept/head_{head}"] = accepted_sum[head].item() / max(steps, 1)
        return metrics


@torch.no_grad()
def greedy_continuations(model: MultiTokenModel, dataset: SequenceDataset, *, max_new_tokens: int | None = None,
                         cache_file: Path | None = None, progress: bool = False,
                         batch_size: int = 16) -> list[torch.Tensor]:
    """The backbone's greedy continuation of every example's question, as long as its response (or
    ``max_new_tokens``), ending at its first EOS.  Batched ``generate(do_sample=False)`` over left-padded
    prompts of similar budgets: the padded batch can differ from an unpadded run by rounding in rare
    near-ties, which does not matter for training targets.  Cached in ``cache_file``."""
    from safetensors.torch import load_file, save_file

    if cache_file is not None and Path(cache_file).is_file():
        stored = load_file(str(cache_file))
        if len(stored) == len(dataset):
            return [stored[str(i)] for i in range(len(dataset))]
    eos = model.eos_token_ids
    pad = int(getattr(model.tokenizer, "pad_token_id", None) or (min(eos) if eos else 0))
    budgets = []
    for i in range(len(dataset)):
        item = dataset[i]
        budget = len(item["input_ids"]) - item["prompt_length"]
        budgets.append(budget if max_new_tokens is None else min(budget, max_new_tokens))
    order = sorted(range(len(dataset)), key=lambda i: (budgets[i], dataset[i]["prompt_length"]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from rich.progress import track

        batches = track(batches, description="greedy targets")
    out: dict[int, torch.Tensor] = {}
    for batch in batches:
        prompts = [dataset[i]["input_ids"][: dataset[i]["prompt_length"]] for i in batch]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            attention[row, width - len(prompt):] = 1
        budget = max(budgets[i] for i in batch)
        if budget > 0:
            generated = model.backbone.generate(
                input_ids=ids.to(model.backbone_device), attention_mask=attention.to(model.backbone_device),
                do_sample=False, max_new_tokens=budget, pad_token_id=pad)[:, width:].cpu()
        else:
            generated = torch.zeros((len(batch), 0), dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = generated[row, : budgets[i]].tolist()
            for j, token in enumerate(tokens):
                if token in eos:
                    tokens = tokens[: j + 1]
                    break
            out[i] = torch.tensor(tokens, dtype=torch.long)
    result = [out[i] for i in range(len(dataset))]
    if cache_file is not None:
        with atomic_file(cache_file) as tmp:  # a kill mid-write leaves no torn cache for the next run to load
            save_file({str(i): t for i, t in enumerate(result)}, str(tmp))
        write_json(Path(cache_file).with_suffix(".json"), {"examples": len(result)}, indent=None, newline=False)
    return result


def choose_draft_vocab(dataset: SequenceDataset, size: int, always: set[int] | frozenset[int] = frozenset(),
                       vocab_size: int | None = None) -> torch.Tensor:
    """The ``size`` most frequent tokens of the training targets (greedy continuations when attached, else
    responses), the ``always`` ids (EOS) included; ties broken by token id."""
    counts: dict[int, int] = {}
    for item in dataset.items:
        ids = item.get("greedy_ids", item["input_ids"])[item["prompt_length"]:]
        for token in ids.tolist():
            counts[token] = counts.get(token, 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    chosen = [t for t in always if vocab_size is None or t < vocab_size]
    for token in ranked:
        if len(chosen) >= size:
            break
        if token not in chosen:
            chosen.append(token)
    filler = 0
    while len(chosen) < size:  # fewer distinct targets than the vocabulary size: pad with unused ids
        if filler not in chosen:
            chosen.append(filler)
        filler += 1
    return torch.tensor(chosen[:size], dtype=torch.long)

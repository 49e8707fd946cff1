"""Stage 3: a small clipped-PPO on the router/heads policy (no TRL: see below).

Each decoding step is a one-step episode.  The state is the backbone's hidden state at a step of a
reference sequence (the backbone's own greedy continuation, so the reference is exactly what verification
accepts); the action is the router's on/off gate for heads ``1..H-1`` (Bernoulli with ``sigmoid(score)``;
the draft chain is the leading run of "on" heads, at most ``k_max - 1``) and one sampled token from each
drafting head.  The composite reward scores the draft against the reference:

- accuracy: drafts equal to the reference token at their offset, over drafts made (1 with no drafts);
- order: 1 minus the share of drafts that name a reference token of the window at the *wrong* offset;
- efficiency: tokens this backbone pass would yield (1 + accepted drafts) over ``k_max``;
- clean stop: 1 minus the share of drafts past the end of the reference (EOS or sequence end).

Advantages are rewards normalised over the rollout (a batch baseline instead of a learned critic: the
episodes are one step long).  The loss is PPO's clipped surrogate plus an entropy bonus on the gates, for
``epochs`` passes over each rollout.  TRL 1.x has no ``PPOTrainer`` (it was removed; its GRPO/RLOO trainers
sample text from a causal-LM policy with a reward model), so it does not fit a policy that is a router and
heads over a frozen backbone with a programmatic reward.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mot.errors import CheckpointError
from mot.io import atomic_file
from mot.multitoken.data import SequenceDataset, collate_sequences, read_tokens, step_targets
from mot.multitoken.model import MultiTokenModel

__all__ = ["PPOConfig", "composite_reward", "train_ppo"]

log = logging.getLogger("mot.multitoken")


@dataclass
class PPOConfig:
    steps: int = 100  # rollouts (each followed by `epochs` updates)
    batch_size: int = 8  # sequences per rollout
    epochs: int = 4
    learning_rate: float = 1e-4
    clip: float = 0.2
    entropy_coef: float = 0.01
    max_grad_norm: float = 1.0
    accuracy_weight: float = 1.0
    order_weight: float = 0.5
    efficiency_weight: float = 1.0
    stop_weight: float = 0.5
    seed: int = 0
    save_every: int = 5000


def composite_reward(drafts: torch.Tensor, chain_length: torch.Tensor, reference: torch.Tensor,
                     k_max: int, cfg: PPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward ``[N]`` of drafts ``[N, H-1]`` (only the first ``chain_length`` count) against ``reference
    [N, H-1]`` (the tokens at offsets 1..H-1; ``-100`` past the end)."""
    n, width = drafts.shape
    offsets = torch.arange(width, device=drafts.device)[None]
    made = offsets < chain_length[:, None]
    count = made.sum(-1).clamp_min(1).float()
    right = (drafts == reference) & made
    accepted = (right | ~made).float().cumprod(-1).mul(made).sum(-1)  # leading run of right drafts
    accuracy = torch.where(chain_length > 0, right.sum(-1) / count, torch.ones_like(count))
    elsewhere = (drafts[:, :, None] == reference[:, None, :]) & (reference[:, None, :] >= 0)
    misplaced = (elsewhere.any(-1) & ~right & made).sum(-1) / count
    order = 1.0 - misplaced
    efficiency = (1.0 + accepted) / k_max
    past_end = ((reference < 0) & made).sum(-1) / count
    stop = 1.0 - past_end
    reward = (cfg.accuracy_weight * accuracy + cfg.order_weight * order + cfg.efficiency_weight * efficiency
              + cfg.stop_weight * stop)
    parts = {"reward/accuracy": accuracy.mean().item(), "reward/order": order.mean().item(),
             "reward/efficiency": efficiency.mean().item(), "reward/stop": stop.mean().item(),
             "accepted_tokens_per_pass": (1.0 + accepted).mean().item()}
    return reward, parts


def _policy(model: MultiTokenModel, hidden: torch.Tensor, tokens: torch.Tensor):
    """Gate logits ``[N, H-1]`` and per-head token log-probabilities ``[N, H-1, V_heads]`` (rows of the
    heads' vocabulary: ``heads.token_ids`` maps them to token ids).  ``tokens [N, H-1]``: the reference
    tokens ``t + 1 ..``, which chain-conditioned heads read (a draft after a wrong one is never accepted,
    so conditioning on the reference changes no reward)."""
    heads = model.heads
    scores = heads.router_scores(hidden)[:, 1:]
    token_logp = torch.stack([F.log_softmax(heads.head_logits(hidden, h, tokens).float(), -1)
                              for h in range(1, heads.num_heads)], dim=1)
    return scores, token_logp


def _log_prob(scores, token_logp, gates, drafts, chain_length, k_max):
    """log pi(action): the gates decided (up to the first "off" or the k_max cap) and the drafted tokens."""
    width = scores.shape[1]
    offsets = torch.arange(width, device=scores.device)[None]
    decided = offsets <= chain_length[:, None]  # gates 1..chain and the one that stopped it
    decided &= offsets < (k_max - 1)
    gate_logp = -F.binary_cross_entropy_with_logits(scores, gates, reduction="none")
    made = offsets < chain_length[:, None]
    draft_logp = token_logp.gather(-1, drafts.clamp_min(0)[..., None])[..., 0]
    return (gate_logp * decided).sum(-1) + (draft_logp * made).sum(-1)


def _sample(scores, token_logp, k_max, generator):
    gates = torch.bernoulli(torch.sigmoid(scores.float()).cpu(), generator=generator).to(scores.device)
    chain = gates.cumprod(-1).sum(-1).clamp_max(k_max - 1).long()
    n, width, vocab = token_logp.shape
    drafts = torch.multinomial(token_logp.exp().reshape(-1, vocab).cpu(), 1, generator=generator)
    return gates, chain, drafts.reshape(n, width).to(scores.device)


def _save_state(path: Path, model: MultiTokenModel, optimizer, step: int, history: list[dict]) -> None:
    with atomic_file(path) as tmp:
        torch.save({"heads": model.heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "rng": torch.get_rng_state(), "history": [{k: float(v) for k, v in h.items()} for h in history]},
                   tmp)


def train_ppo(model: MultiTokenModel, dataset: SequenceDataset, run_dir: str | Path, cfg: PPOConfig,
              *, progress: bool = False) -> dict[str, Any]:
    """Run ``cfg.steps`` PPO rollouts on ``dataset``'s greedy sequences; resumes from ``run_dir/state.pt``."""
    if not dataset.has_greedy:
        raise ValueError("PPO needs the backbone's greedy continuations (dataset.set_greedy)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    heads = model.heads
    k_max, num_heads = model.config.k_max, heads.num_heads
    params = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    torch.manual_seed(cfg.seed)
    step, history = 0, []
    state_file = run_dir / "state.pt"
    if state_file.is_file():
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            heads.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])
            step, history = int(state["step"]), list(state["history"])
            torch.set_rng_state(state["rng"])
        except Exception as exc:  # noqa: BLE001 - truncated, corrupted, another run's or another model's state
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise CheckpointError(f"{state_file}: not a PPO state this run can resume ({type(exc).__name__}: "
                                  f"{reason}); move it away to start PPO over") from None
        log.info("PPO resumed at step %d from %s", step, state_file)
    pad = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
    order = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    heads.train()
    while step < cfg.steps:
        order.seed(cfg.seed * 100_003 + step)
        generator.manual_seed(cfg.seed * 100_003 + step)
        picks = [order.randrange(len(dataset)) for _ in range(cfg.batch_size)]
        batch = collate_sequences([dataset[i] for i in picks], pad)
        ids, attention, response = batch["greedy_ids"], batch["greedy_attention_mask"], batch["greedy_response_mask"]
        hidden, _, _ = model.backbone_step(ids, attention_mask=attention, use_cache=False)
        step_mask, labels = step_targets(ids, response, num_heads)
        hidden = hidden[step_mask.to(hidden.device)].detach()
        reference = labels[step_mask][:, 1:].to(hidden.device)
        read = read_tokens(labels[step_mask]).to(hidden.device)
        if hidden.shape[0] == 0 or num_heads < 2:
            step += 1
            continue
        with torch.no_grad():
            scores, token_logp = _policy(model, hidden, read)
            gates, chain, drafts = _sample(scores, token_logp, k_max, generator)
            old_logp = _log_prob(scores, token_logp, gates, drafts, chain, k_max)
            reward, parts = composite_reward(heads.token_ids(drafts), chain, reference, k_max, cfg)
            advantage = (reward - reward.mean()) / (reward.std() + 1e-6) if reward.numel() > 1 else reward * 0
        for _ in range(cfg.epochs):
            scores, token_logp = _policy(model, hidden, read)
            ratio = (_log_prob(scores, token_logp, gates, drafts, chain, k_max) - old_logp).exp()
            surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantage)
            p = torch.sigmoid(scores)
            gate_entropy = -(p * F.logsigmoid(scores) + (1 - p) * F.logsigmoid(-scores)).sum(-1)
            loss = -surrogate.mean() - cfg.entropy_coef * gate_entropy.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
        step += 1
        record = {"step": step, "reward": reward.mean().item(), "loss": loss.item(), **parts}
        history.append(record)
        if progress and (step % 10 == 0 or step == cfg.steps):
            log.info("PPO step %d/%d: reward %.4f, accepted tokens/pass %.3f", step, cfg.steps,
                     record["reward"], record["accepted_tokens_per_pass"])
        if step % cfg.save_every == 0 and step < cfg.steps:
            _save_state(state_file, model, optimizer, step, history)
    heads.eval()
    _save_state(state_file, model, optimizer, step, history)
    last = history[-10:]
    summary = {k: sum(h[k] for h in last) / len(last) for k in last[0]} if last else {}
    return {"ppo": asdict(cfg), "steps": step, "last_10_mean": summary}

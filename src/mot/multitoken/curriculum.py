"""The three-stage curriculum end to end: stage 1 -> ``s1/``, stage 2 -> ``s2/``, PPO -> ``ppo_final/``.

Each stage trains through the shared Trainer in its own run directory (``stage1/``, ``stage2/``, ``ppo/``
under ``out``), which holds its step checkpoints (optimizer, scheduler, RNG, data position).  Running the
same command again resumes: finished stages are loaded from their exported checkpoint and skipped, and the
stage in progress resumes from its newest step checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mot.errors import UsageError
from mot.multitoken.data import Example, SequenceDataset
from mot.multitoken.io import (
    META_FILE,
    backbone_reference,
    read_multitoken_meta,
    save_multitoken,
    write_metadata,
)
from mot.multitoken.model import MultiTokenModel
from mot.multitoken.stages import MultiTokenTask, choose_draft_vocab, greedy_continuations

__all__ = ["CurriculumConfig", "train_curriculum"]

log = logging.getLogger("mot.multitoken")

STAGE_DIRS = {1: "s1", 2: "s2", 3: "ppo_final"}


@dataclass
class CurriculumConfig:
    stage1_epochs: float = 1.0
    stage2_epochs: float = 1.0
    ppo_steps: int = 0
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_length: int = 512
    save_every: int = 5000  # step checkpoints (resume points) in each stage's run directory
    keep_last: int | None = 2
    seed: int = 0
    device: str = "auto"  # where the heads train (the backbone stays where it was loaded)
    # Where stage 2's greedy targets come from: "generate" first generates the backbone's greedy continuation
    # of every question (every target known); "chain" reads them off the teacher-forced pass over the data
    # (exact wherever the data pins the backbone's greedy chain down; no generation, but only at steps where
    # the backbone agrees with the data, which are easier than decoding's: measured worse, docs/multitoken.md)
    self_distill: str = "generate"
    greedy_max_new_tokens: int | None = None  # cap on generated continuations (self_distill="generate", PPO)
    greedy_batch: int = 16  # prompts per batched generate() when making them
    log_every: int = 10
    progress: bool = True
    save_backbone: bool = False
    cache_hidden: bool = False  # keep each sequence's backbone states in memory (frozen backbone: same every epoch)
    ppo: dict[str, Any] = field(default_factory=dict)  # PPOConfig fields

    def __post_init__(self) -> None:
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise UsageError("--stage1_epochs and --stage2_epochs must be >= 0")
        if self.ppo_steps < 0:
            raise UsageError("--ppo_steps must be >= 0")
        if self.batch_size < 1:
            raise UsageError("--batch must be >= 1")
        if not self.learning_rate > 0:
            raise UsageError("--lr must be > 0")
        if self.self_distill not in ("chain", "generate"):
            raise UsageError(f"--self-distill must be 'chain' or 'generate', got {self.self_distill!r}")


def _training_config(cfg: CurriculumConfig, epochs: float, has_val: bool):
    from mot.training import TrainingConfig

    return TrainingConfig(
        learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, num_epochs=epochs, seed=cfg.seed,
        device=cfg.device, precision="auto", save_every=cfg.save_every, keep_last=cfg.keep_last,
        eval_every=None, best_metric="val_loss" if has_val else None, log_every=cfg.log_every,
        progress=cfg.progress, tensorboard=False, plots=False, warmup_steps=0, max_grad_norm=1.0,
    )


def _load_stage(model: MultiTokenModel, directory: Path) -> None:
    from safetensors.torch import load_file

    read_multitoken_meta(directory)
    state = {**load_file(str(directory / "heads.safetensors")), **load_file(str(directory / "router.safetensors"))}
    model.heads.load_state_dict(state)


def _run_stage(model, stage, cfg, train, val, out: Path, epochs: float, fingerprint) -> dict[str, float]:
    from mot.training import Trainer

    name = STAGE_DIRS[stage]
    task = MultiTokenTask(
        model, stage, fingerprint=fingerprint, cache_hidden=cfg.cache_hidden,
        metadata=lambda d: write_metadata(model, d, stage=f"{name}-partial"),
    )
    trainer = Trainer(task, _training_config(cfg, epochs, val is not None), train, val, out / f"stage{stage}",
                      run_config={"multitoken": model.config.to_dict(), "curriculum": asdict(cfg)})
    model.heads_device = trainer.device
    # the stage-2 schedules read the Trainer's own step, which a resume restores
    task.progress = lambda: trainer.step / max(trainer.total_steps, 1)
    result = trainer.fit(resume="auto")
    model.heads.eval()
    return {"final_loss": result.last_loss, "steps": result.step, **trainer.last_eval}


def train_curriculum(
    model: MultiTokenModel,
    train_examples: list[Example],
    out: str | Path,
    cfg: CurriculumConfig,
    *,
    val_examples: list[Example] | None = None,
) -> dict[str, Path]:
    """Run stage 1, stage 2 and (``ppo_steps > 0``) PPO; returns the exported checkpoint of each stage."""
    if cfg.ppo_steps > 0 and model.heads.layer is not None:
        raise UsageError("--ppo_steps: PPO trains residual heads only (its policy scores each head on one state); "
                         "train --head-type layer with --ppo_steps 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    eos = sorted(model.eos_token_ids)
    eos_id = eos[0] if eos else None
    train = SequenceDataset(train_examples, model.tokenizer, cfg.max_length, eos_id)
    val = SequenceDataset(val_examples, model.tokenizer, cfg.max_length, eos_id) if val_examples else None
    ref = backbone_reference(model)
    fingerprint = {"backbone": ref["fingerprint"], "num_heads": str(model.config.num_heads),
                   "head_layers": str(model.config.head_layers)}
    if model.config.head_type != "residual":  # (residual runs keep the fingerprint they always had)
        fingerprint["head_type"] = model.config.head_type
    exported: dict[str, Path] = {}

    def attach_greedy() -> None:
        for dataset, label in ((train, "train"), (val, "val")):
            if dataset is not None and not dataset.has_greedy:
                dataset.set_greedy(greedy_continuations(
                    model, dataset, max_new_tokens=cfg.greedy_max_new_tokens, batch_size=cfg.greedy_batch,
                    cache_file=out / "stage2" / f"greedy_{label}.safetensors", progress=cfg.progress))

    generate = cfg.self_distill == "generate"
    if model.heads.subset and not (out / STAGE_DIRS[1] / META_FILE).is_file():
        # the draft vocabulary: the most frequent tokens of what verification will accept (of the responses
        # when no continuation is generated: where the backbone agrees with them, they are the same tokens)
        if generate:
            attach_greedy()
        model.heads.set_draft_vocab(choose_draft_vocab(train, model.heads.vocab_ids.numel(), model.eos_token_ids,
                                                       model.heads.vocab_size))

    for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
        name = STAGE_DIRS[stage]
        target = out / name
        if (target / META_FILE).is_file():
            log.info("stage %d already done: loading %s", stage, target)
            _load_stage(model, target)
            exported[name] = target
            continue
        metrics: dict[str, Any] = {"epochs": epochs}
        if stage == 2 and generate:
            attach_greedy()
        if epochs > 0:
            metrics.update(_run_stage(model, stage, cfg, train, val, out, epochs, fingerprint))
        exported[name] = save_multitoken(model, target, stage=name, metrics=metrics, save_backbone=cfg.save_backbone)
        log.info("stage %d done: %s", stage, target)

    if cfg.ppo_steps > 0:
        from mot.multitoken.ppo import PPOConfig, train_ppo

        target = out / STAGE_DIRS[3]
        if (target / META_FILE).is_file():
            _load_stage(model, target)
        else:
            attach_greedy()
            ppo_cfg = PPOConfig(**{"steps": cfg.ppo_steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
                                   "save_every": cfg.save_every, **cfg.ppo})
            metrics = train_ppo(model, train, out / "ppo", ppo_cfg, progress=cfg.progress)
            save_multitoken(model, target, stage="ppo_final", metrics=metrics, save_backbone=cfg.save_backbone)
        exported[STAGE_DIRS[3]] = target
    return exported

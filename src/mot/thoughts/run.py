"""A Mixture-of-Thoughts training run from its config, and a trained model from a checkpoint.

``load_run_config`` reads a run config (``mot.thoughts.run_config``), ``build_model`` resolves its
experts into an untrained ``MixtureOfThoughts``, ``run_training`` trains it with the shared Trainer
(DDP when started under torchrun), and ``load_checkpoint_model`` opens any checkpoint a run writes.
``mot thoughts`` (``mot.cli.thoughts_cmd``) parses the flags and prints; the work is here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mot.config import load_config, save_config
from mot.experts.resolve import resolve_expert
from mot.thoughts.data import PairDataset, load_splits
from mot.thoughts.io import read_config
from mot.thoughts.model import MixtureOfThoughts
from mot.thoughts.peer_cache import PeerStateCache
from mot.thoughts.run_config import MoTRunConfig, resolve_paths
from mot.thoughts.training import MoTTrainTask
from mot.training import Trainer, TrainResult
from mot.training.distributed import barrier, init_distributed, shutdown

logger = logging.getLogger("mot.thoughts")


def load_run_config(path: str | Path, overrides: list[str]) -> MoTRunConfig:
    """A run config file with ``--set`` overrides; data paths relative to the file's folder made absolute."""
    return resolve_paths(load_config(path, MoTRunConfig, overrides), Path(path).resolve().parent)


def build_model(config: MoTRunConfig, device: str = "cpu") -> MixtureOfThoughts:
    """The ``MixtureOfThoughts`` a run config describes (experts resolved, router untrained).

    The trainable parts are initialised from ``training.seed`` alone, so every DDP rank (and every
    fresh run of the same config) starts from the same weights."""
    experts = [resolve_expert(e.spec, dtype=e.dtype, device=e.device or device, quantization=e.quantization)
               for e in config.expert_models]
    return MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts], config.mot_config,
                             expert_specs=[e.spec for e in config.expert_models], seed=config.training.seed)


def run_training(cfg: MoTRunConfig, resume: str | None = None) -> TrainResult:
    """Train as the run config says; returns the ``TrainResult`` (on every rank)."""
    # data first: a missing or malformed file is reported before minutes of model loading
    train_pairs, val_pairs, test_pairs = load_splits(cfg.data)
    env = init_distributed(cfg.training.device)
    try:
        device = str(env.device)
        model = build_model(cfg, device=device)
        run_dir = cfg.run_dir()
        cache = None
        if cfg.peer_cache.enabled:
            directory = Path(cfg.peer_cache.directory) if cfg.peer_cache.directory else Path(cfg.output_dir) / "peer_cache"
            if env.is_main:
                cache = PeerStateCache(directory, model, cfg.peer_cache.dtype)
                todo = cache.missing(train_pairs + val_pairs)
                if todo:
                    logger.warning("precomputing %d peer state(s) into %s", todo, directory)
                    with torch.no_grad():
                        cache.build(train_pairs + val_pairs, batch_size=cfg.training.batch_size)
            barrier(env)
            if cache is None:
                cache = PeerStateCache(directory, model, cfg.peer_cache.dtype)
        task = MoTTrainTask(model, peer_cache=cache, generation_samples=cfg.evaluation.generation_samples,
                            max_new_tokens=cfg.evaluation.max_new_tokens, generation_mode=cfg.evaluation.mode)
        per_epoch = max(1, len(train_pairs) // (cfg.training.batch_size * env.world_size))
        steps = cfg.training.max_steps or max(1, int(round((cfg.training.num_epochs or 1.0) * per_epoch
                                                          / cfg.training.gradient_accumulation_steps)))
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "run_config.json")
            (run_dir / "splits.json").write_text(json.dumps(
                {"train": len(train_pairs), "val": len(val_pairs), "test": len(test_pairs),
                 "test_ids": [p.id for p in test_pairs]}, indent=1) + "\n")
        trainer = Trainer(task, cfg.training.engine_config(steps), PairDataset(train_pairs),
                          PairDataset(val_pairs) if val_pairs else None, run_dir=run_dir,
                          run_config=cfg.model_dump(mode="json"))
        return trainer.fit(resume=resume)
    finally:
        shutdown(env)


def load_checkpoint_model(checkpoint: str | Path, experts: list[str] | None = None, device: str = "cpu",
                          dtype: str = "float32") -> MixtureOfThoughts:
    """A trained MoT from a checkpoint directory; experts default to the specs recorded in it."""
    meta = read_config(checkpoint)
    specs = experts or [record["spec"] for record in meta["experts"]]
    return MixtureOfThoughts.from_pretrained(checkpoint, specs, dtype=dtype, device=device)


__all__ = ["build_model", "load_checkpoint_model", "load_run_config", "run_training"]

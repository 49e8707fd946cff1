"""Train moellama from a ``MoeLlamaFileConfig``: tokenizer, token cache, model, task, shared Trainer.

Layout of ``paths.output_dir`` (the run directory)::

    tokenizer/               the BPE tokenizer (trained on the first run, reused after: a resume needs it)
    cache/                   the memory-mapped token cache (``data.TokenCache``), keyed by tokenizer + corpus
    step-*/ best/            the Trainer's checkpoints (weights, optimizer, RNG, data position, config.json)
    metrics.jsonl train.log tensorboard/ loss.png routing.png
    config.json              the whole moellama config of the run

At the end the best (else the last) weights are written HF-native to ``paths.model_path``
(``save_pretrained`` + tokenizer, loadable with ``AutoModelForCausalLM.from_pretrained``), together
with ``metrics.jsonl``, the plots and ``training_summary.json`` so that ``evaluate`` can report on the
training from the model directory alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mot.errors import UsageError
from mot.io import write_json
from mot.moellama.config import MoeLlamaFileConfig

logger = logging.getLogger("mot.moellama")

SUMMARY_FILE = "training_summary.json"
TOKENIZER_META = "mot_tokenizer.json"


@dataclass
class TrainOutcome:
    result: object  # mot.training.TrainResult
    model_path: Path | None  # None on ranks other than 0
    summary: dict


def engine_config(cfg: MoeLlamaFileConfig, progress: bool = True):
    """The shared engine's ``TrainingConfig`` for a moellama config."""
    from mot.training import TrainingConfig
    from mot.training.distributed import under_torchrun

    t, d = cfg.training, cfg.device
    device = d.type
    if d.type == "cuda" and d.gpu_ids and not under_torchrun():  # under torchrun each rank takes its local GPU
        device = f"cuda:{d.gpu_ids[0]}"
    return TrainingConfig(
        learning_rate=t.learning_rate, batch_size=t.batch_size, num_epochs=float(t.epochs), max_steps=t.max_steps,
        gradient_accumulation_steps=t.gradient_accumulation_steps, warmup_steps=t.warmup_steps,
        min_lr_ratio=t.min_lr_ratio, adam_betas=(0.9, 0.95), num_workers=t.num_workers, precision=t.precision,
        device=device, seed=t.seed, eval_every=t.eval_steps, save_every=t.save_every or t.eval_steps,
        keep_last=t.keep_last, progress=progress, log_every=max(1, min(10, t.eval_steps)),
    )


def build_tokenizer(cfg: MoeLlamaFileConfig, documents: list[str], directory: Path):
    """The run's tokenizer: reused from ``directory`` when it was trained for the same dataset and size."""
    from mot.moellama.tokenizer import load_tokenizer, train_tokenizer

    vocab = cfg.training.tokenizer_vocab_size or cfg.model.vocab_size
    wanted = {"dataset": cfg.training.dataset, "vocab_size": vocab}
    meta = directory / TOKENIZER_META
    if meta.is_file() and json.loads(meta.read_text()) == wanted:
        tokenizer = load_tokenizer(directory)
    else:
        logger.info("training a %d-token byte-level BPE on %d document(s)", vocab, len(documents))
        tokenizer = train_tokenizer(documents, vocab_size=vocab)
        tokenizer.save_pretrained(directory)
        write_json(meta, wanted, indent=None)
    if len(tokenizer) > cfg.model.vocab_size:
        raise UsageError(f"the tokenizer has {len(tokenizer)} tokens but model.vocab_size is {cfg.model.vocab_size}; "
                         "raise model.vocab_size or lower training.tokenizer_vocab_size")
    return tokenizer


def evenly_spaced(dataset, limit: int | None):
    """At most ``limit`` items of ``dataset``, spread over all of it (validation stays cheap and representative)."""
    if limit is None or len(dataset) <= limit:
        return dataset
    from torch.utils.data import Subset

    return Subset(dataset, np.linspace(0, len(dataset) - 1, limit).round().astype(int).tolist())


def build_data(cfg: MoeLlamaFileConfig, env=None):
    """``(tokenizer, train_windows, val_windows)``.  Under DDP rank 0 trains the tokenizer and fills the
    cache while the other ranks wait, then they read the same files."""
    from mot.moellama.data import load_documents, prepare_data
    from mot.moellama.tokenizer import load_tokenizer
    from mot.training.distributed import barrier

    out = Path(cfg.paths.output_dir)
    main = env is None or env.is_main
    documents = load_documents(cfg.training.dataset, cache_dir=out / "cache")
    if main:
        tokenizer = build_tokenizer(cfg, documents, out / "tokenizer")
        prepare_data(documents, tokenizer, out / "cache", cfg.training.seq_len, cfg.training.val_fraction,
                     cfg.training.seed)
    if env is not None:
        barrier(env)
    if not main:
        tokenizer = load_tokenizer(out / "tokenizer")
    train, val = prepare_data(documents, tokenizer, out / "cache", cfg.training.seq_len, cfg.training.val_fraction,
                              cfg.training.seed)
    if len(train) == 0:
        raise UsageError(f"training.dataset {cfg.training.dataset!r} gives no training window of "
                         f"{cfg.training.seq_len} tokens; lower training.seq_len or add text")
    return tokenizer, train, (evenly_spaced(val, cfg.training.max_val_windows) if len(val) else None)


def train(cfg: MoeLlamaFileConfig, resume: str | None = None, progress: bool = True) -> TrainOutcome:
    """Train as ``cfg`` says (resumable), then save the HF-native model to ``paths.model_path``."""
    import torch

    from mot.config import save_config
    from mot.moellama.config import resolve_device
    from mot.moellama.model import MoeLlama
    from mot.moellama.task import MoeLlamaTask
    from mot.training import Trainer
    from mot.training.distributed import init_distributed, shutdown, under_torchrun

    if cfg.device.num_cpu_threads:
        torch.set_num_threads(cfg.device.num_cpu_threads)
    if not under_torchrun():
        resolve_device(cfg.device.type, cfg.device.gpu_ids)  # an unavailable device fails here, in one line
    engine = engine_config(cfg, progress=progress)
    env = init_distributed(engine.device)
    try:
        started = time.perf_counter()
        tokenizer, train_data, val_data = build_data(cfg, env)
        run_dir = Path(cfg.paths.output_dir)
        if env.is_main:
            save_config(cfg, run_dir / "config.json")
        torch.manual_seed(cfg.training.seed)
        model = MoeLlama(cfg.model)
        task = MoeLlamaTask(model, weight_decay=cfg.training.weight_decay, tokenizer=tokenizer)
        if env.is_main:
            logger.info("moellama: %.2fM parameters, %.2fM active per token; %d training and %d validation "
                        "windows of %d tokens", model.num_parameters() / 1e6, model.num_parameters(active=True) / 1e6,
                        len(train_data), len(val_data) if val_data is not None else 0, cfg.training.seq_len)
        trainer = Trainer(task, engine, train_data, val_data, run_dir=run_dir, run_config=cfg.model_dump(mode="json"))
        result = trainer.fit(resume=resume)
        summary = {
            "steps": result.step, "tokens_per_step": trainer.global_batch_size * cfg.training.seq_len,
            "tokens_seen": result.step * trainer.global_batch_size * cfg.training.seq_len,
            "train_windows": len(train_data), "val_windows": len(val_data) if val_data is not None else 0,
            "best_val_loss": result.best_metric, "best_step": result.best_step, "last_loss": result.last_loss,
            "final_eval": trainer.last_eval, "precision": trainer.precision, "device": str(trainer.device),
            "world_size": env.world_size, "wall_time_s": time.perf_counter() - started,
            "parameters": model.num_parameters(), "active_parameters": model.num_parameters(active=True),
            "run_dir": str(run_dir), "dataset": cfg.training.dataset,
        }
        model_path = None
        if env.is_main:
            model_path = save_model(task, tokenizer, run_dir, Path(cfg.paths.model_path), summary)
        return TrainOutcome(result, model_path, summary)
    finally:
        shutdown(env)


def save_model(task, tokenizer, run_dir: Path, model_path: Path, summary: dict) -> Path:
    """Best weights (else the current ones) -> HF-native ``model_path`` with the run's records beside them."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from mot.moellama.hf import MoeLlamaConfig, MoeLlamaForCausalLM
    from mot.training.checkpoint import WEIGHTS_FILE, read_meta
    from mot.training.tracking import read_metrics

    module = task.module
    best = run_dir / "best"
    if read_meta(best) is not None:
        module.load_state_dict(load_file(str(best / WEIGHTS_FILE)))
        summary["saved_weights"] = f"best (step {summary['best_step']})"
    else:
        summary["saved_weights"] = f"last (step {summary['steps']})"
    hf = MoeLlamaForCausalLM(MoeLlamaConfig.from_model_config(
        module.cfg, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    hf.model.load_state_dict(module.state_dict())
    model_path.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    hf.cpu().save_pretrained(model_path)
    tokenizer.save_pretrained(model_path)
    for name in ("metrics.jsonl", "loss.png", "routing.png", "config.json"):
        src = run_dir / name
        if src.is_file() and src.resolve() != (model_path / name).resolve():
            shutil.copyfile(src, model_path / ("run_config.json" if name == "config.json" else name))
    records = read_metrics(run_dir)
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    summary["tokens_per_s"] = float(np.median(rates)) if rates else None
    write_json(model_path / SUMMARY_FILE, summary)
    logger.info("saved the model to %s", model_path)
    return model_path

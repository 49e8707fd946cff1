"""Where a run reports: ``train.log``, ``metrics.jsonl``, TensorBoard, optional W&B, a progress bar.

Only rank 0 tracks.  ``metrics.jsonl`` holds one JSON object per logged step (and per validation); on
resume from step ``S`` records past ``S`` (written after that checkpoint, before the crash) are dropped,
so the file never holds a step twice and reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from mot.errors import MotError
from mot.io import write_text

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
TB_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"

logger = logging.getLogger("mot.training")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Keep records with ``step <= last_step``; returns how many were dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    records = read_metrics(run_dir)
    kept = [r for r in records if int(r.get("step", 0)) <= last_step]
    write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    return len(records) - len(kept)


def _require_wandb():
    try:
        import wandb
    except ImportError as exc:
        raise MotError(
            "W&B tracking was requested (wandb_mode online/offline) but the optional package 'wandb' is "
            "not installed; pip install wandb, or set training.wandb_mode=disabled"
        ) from exc
    return wandb


def _finite_numbers(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Progress:
    """A rich progress bar: step, loss, lr, samples/s, ETA.  Disabled off a TTY or when asked."""

    def __init__(self, total: int, start: int, enabled: bool):
        self._bar = None
        if not enabled or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=total, completed=start, stats="")

    def update(self, step: int, stats: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Tracker:
    """Rank 0's sinks.  On other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, total_steps: int,
                 tensorboard: bool = True, wandb_mode: str = "disabled", wandb_project: str = "mot",
                 wandb_run_name: str | None = None, run_config: dict[str, Any] | None = None,
                 progress: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._file_handler: logging.Handler | None = None
        self._metrics = None
        self._tb = None
        self._wandb = None
        self.progress = Progress(total_steps, start_step, enabled and progress)
        if wandb_mode != "disabled":
            wandb = _require_wandb()  # every rank fails the same way, before any work
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run_dir / LOG_FILE, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        self._file_handler = handler
        dropped = truncate_metrics(self.run_dir, start_step)
        if dropped:
            logger.info("dropped %d metrics record(s) past step %d (written after that checkpoint)",
                        dropped, start_step)
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / TB_DIR),
                                     purge_step=start_step + 1 if start_step > 0 else None)
        if wandb_mode != "disabled":
            id_file = self.run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
            self._wandb = wandb.init(project=wandb_project, name=wandb_run_name, dir=str(self.run_dir),
                                     mode=wandb_mode, id=run_id, resume="allow", config=run_config or {})

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``) to every sink."""
        if not self.enabled:
            return
        step = int(record["step"])
        assert self._metrics is not None
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        numbers = _finite_numbers({k: v for k, v in record.items() if k not in ("step", "epoch")})
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        self.progress.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._file_handler is not None:
            logger.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

"""Checkpoint directories: atomic writes, discovery of the newest complete one, compatibility checks.

Layout of ``<run_dir>/step-000123/`` (and ``<run_dir>/best/``)::

    checkpoint.json        step, epoch, data position, fingerprint, parameter shapes, metrics, and the
                           SHA-256 of every other file in the directory (written last)
    trainable.safetensors  the task's trainable_state_dict()
    training_config.json   the TrainingConfig of the run
    trainer_state.pt       optimizer, scheduler, grad scaler, RNG states (per rank), counters; tensors and
                           primitives only, read back with torch.load(weights_only=True)
    ...                    whatever the task's save_artifacts() wrote (config.json, tokenizer files)

Everything is written into ``.tmp-step-000123-<pid>/`` and renamed into place, so a directory named
``step-*`` is complete or absent; a crash leaves only a ``.tmp-*`` directory, removed on the next start.
Reading a checkpoint verifies the checksums: a corrupted file (a bit flip, a truncated copy) makes the
checkpoint invalid, and ``resume="auto"`` then falls back to the newest valid one with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mot.errors import CheckpointError
from mot.io import atomic_directory, sha256_file

META_FILE = "checkpoint.json"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "training_config.json"
REQUIRED_FILES = (META_FILE, WEIGHTS_FILE, STATE_FILE)
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
TEMP_PREFIX = ".tmp-"
FORMAT_VERSION = 2  # 2: checksums of every file
TRAINER_STATE_KEYS = {"optimizer": dict, "scheduler": dict, "scaler": dict, "rng": list, "step": int,
                      "epoch": int, "micro_index": int, "nonfinite_total": int, "consecutive_nonfinite": int}

logger = logging.getLogger(__name__)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ----------------------------------------------------------------------------------------------- writing


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_weights(path: Path, weights: Mapping[str, torch.Tensor]) -> None:
    # Clone so tied parameters (shared storage) become separate tensors, which safetensors requires.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    save_file(tensors, str(path))


def _write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint(
    final: Path,
    *,
    weights: Mapping[str, torch.Tensor],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    training_config: dict[str, Any],
    save_artifacts: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete checkpoint to ``final`` atomically (temp dir + rename)."""
    final = Path(final)
    # the old checkpoint is moved aside to .tmp-old-* while the new one is renamed in: both names are
    # .tmp-*, so clean_temp_dirs removes whatever a crash leaves
    with atomic_directory(final, temp_name=f"{TEMP_PREFIX}{final.name}-{os.getpid()}",
                          old_name=f"{TEMP_PREFIX}old-{final.name}-{os.getpid()}") as tmp:
        if save_artifacts is not None:
            save_artifacts(tmp)
        _write_weights(tmp / WEIGHTS_FILE, weights)
        _write_json(tmp / CONFIG_FILE, training_config)
        _write_trainer_state(tmp / STATE_FILE, trainer_state)
        _write_json(tmp / META_FILE, {"format": FORMAT_VERSION, **meta, "checksums": checksums(tmp)})
    return final


def clean_temp_dirs(run_dir: Path) -> list[Path]:
    """Remove leftovers of interrupted writes; returns what was removed."""
    removed = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            if path.name.startswith(TEMP_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------- discovery


file_sha256 = sha256_file  # the name tests/training read; the function is mot.io's


def checksums(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` except ``checkpoint.json``."""
    directory = Path(directory)
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != META_FILE:
            out[rel] = sha256_file(path)
    return out


def read_meta(path: Path) -> dict[str, Any] | None:
    """The checkpoint's metadata, or None when ``path`` is not a complete checkpoint (checksums are
    not verified here: see :func:`checkpoint_problem`)."""
    path = Path(path)
    if not path.is_dir() or not all((path / f).is_file() for f in REQUIRED_FILES):
        return None
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "step" in meta else None


def checkpoint_problem(path: Path) -> str | None:
    """None when ``path`` is a complete checkpoint whose files match their recorded checksums; otherwise
    what is wrong, in a few words (``missing trainable.safetensors``, ``trainable.safetensors does not
    match its checksum``).  Checkpoints written before checksums were recorded pass unverified."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    meta = read_meta(path)
    if meta is None:
        return f"unreadable {META_FILE}"
    recorded = meta.get("checksums")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        return f"{META_FILE} has no valid checksums"
    for rel, digest in sorted(recorded.items()):
        file = path / rel
        if not file.is_file():
            return f"missing {rel}"
        if sha256_file(file) != digest:
            return f"{rel} does not match its checksum (corrupted)"
    return None


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*`` directory (complete or not), oldest first."""
    found = []
    if Path(run_dir).is_dir():
        for path in Path(run_dir).iterdir():
            match = STEP_DIR_RE.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``step-*`` checkpoint in ``run_dir`` (temp and partial directories ignored;
    checksums not verified: :func:`newest_valid_checkpoint` does that)."""
    for _, path in reversed(step_checkpoints(run_dir)):
        if read_meta(path) is not None:
            return path
    return None


def newest_valid_checkpoint(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest ``step-*`` checkpoint that is complete and matches its checksums, and the newer ones
    passed over with what is wrong with each (newest first)."""
    skipped = []
    for _, path in reversed(step_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; ``best/`` is never touched."""
    if keep_last is None:
        return []
    ckpts = step_checkpoints(run_dir)
    doomed = [path for _, path in ckpts[:-keep_last]] if len(ckpts) > keep_last else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def resolve_resume(resume: str | os.PathLike | None, run_dir: Path) -> Path | None:
    """``None`` -> start fresh; ``"auto"`` -> the newest valid checkpoint in ``run_dir`` (fresh when the
    run has none yet); a path -> that checkpoint, or the newest valid one inside it when it is a run
    directory.

    ``"auto"`` passes over corrupted or incomplete checkpoints to the previous valid one with a warning
    naming both; when the run has ``step-*`` checkpoints but none is valid it raises ``CheckpointError``
    instead of silently starting again from step 0 (starting over is asked for by not resuming).
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        return _newest_or_fail(Path(run_dir), "resume=auto", fresh_if_empty=True)
    path = Path(resume).expanduser()
    if not path.exists():
        raise CheckpointError(f"resume checkpoint '{path}' does not exist; give a step-* directory or 'auto'")
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is not a complete checkpoint (not a directory); "
                              "give a step-* directory written by mot or 'auto'")
    if (path / META_FILE).is_file() or not step_checkpoints(path):
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"'{path}' is not a complete checkpoint ({problem}); give a step-* directory "
                                  "written by mot or 'auto'")
        return path
    return _newest_or_fail(path, f"resume '{path}'", fresh_if_empty=False)


def _newest_or_fail(run_dir: Path, what: str, *, fresh_if_empty: bool) -> Path | None:
    found, skipped = newest_valid_checkpoint(run_dir)
    if skipped and found is not None:
        for bad, problem in skipped:
            logger.warning("%s: skipping checkpoint %s (%s); resuming from the previous valid one, %s",
                           what, bad, problem, found)
    if found is None and skipped:
        bad, problem = skipped[0]
        raise CheckpointError(
            f"{what}: none of the {len(skipped)} checkpoint(s) in {run_dir} is valid (newest: {bad.name}: "
            f"{problem}); restore the files, or start over from step 0 by running without resume "
            f"(or after removing {run_dir}/step-*)")
    if found is None and not fresh_if_empty:
        raise CheckpointError(f"{what}: no checkpoint in {run_dir}; give a step-* directory written by mot or 'auto'")
    return found


# --------------------------------------------------------------------------------------------- reading


@dataclass
class LoadedCheckpoint:
    path: Path
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint after verifying its checksums; anything wrong is one ``CheckpointError`` line."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"'{path}' is not a valid checkpoint ({problem}); give a step-* directory "
                              "written by mot")
    meta = read_meta(path)
    assert meta is not None  # checked by checkpoint_problem
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {exc}") from exc
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read {path / STATE_FILE}: {str(exc).splitlines()[0]}") from exc
    _check_trainer_state(path / STATE_FILE, state)
    return LoadedCheckpoint(path, meta, weights, state)


def _check_trainer_state(file: Path, state: Any) -> None:
    """One line naming ``file`` and the first key that is missing or of the wrong type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict of trainer state, found a {type(state).__name__}; "
                              "it was not written by mot's Trainer")
    for key, kind in TRAINER_STATE_KEYS.items():
        if key not in state:
            raise CheckpointError(f"{file}: trainer state has no '{key}' entry; it was not written by mot's "
                                  "Trainer (or is damaged)")
        if not isinstance(state[key], kind):
            raise CheckpointError(f"{file}: trainer state '{key}' is a {type(state[key]).__name__}, expected a "
                                  f"{kind.__name__}; it was not written by mot's Trainer (or is damaged)")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(optimizer.get("state"), dict):
        raise CheckpointError(f"{file}: trainer state 'optimizer' has no param_groups/state; it was not written "
                              "by mot's Trainer (or is damaged)")
    if not state["rng"] or not all(isinstance(r, dict) for r in state["rng"]):
        raise CheckpointError(f"{file}: trainer state 'rng' holds no per-process RNG states")


def _fmt_shape(shape: Any) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_compatible(ckpt: LoadedCheckpoint, expected: Mapping[str, torch.Tensor],
                     fingerprint: Mapping[str, Any] | None) -> None:
    """Refuse a checkpoint of another model/config with one line naming the first mismatch."""
    where = f"checkpoint '{ckpt.path}'"
    saved_fp = ckpt.meta.get("fingerprint") or {}
    if fingerprint:
        for key in sorted(set(saved_fp) | set(fingerprint)):
            if saved_fp.get(key) != fingerprint.get(key):
                raise CheckpointError(
                    f"{where} belongs to another model: fingerprint '{key}' is {saved_fp.get(key)!r} "
                    f"there but {fingerprint.get(key)!r} here; resume with the config it was trained with"
                )
    missing = sorted(set(expected) - set(ckpt.weights))
    unexpected = sorted(set(ckpt.weights) - set(expected))
    if missing:
        raise CheckpointError(f"{where} does not match this model: parameter '{missing[0]}' is missing "
                              f"({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(f"{where} does not match this model: it has parameter '{unexpected[0]}' "
                              f"which this model lacks ({len(unexpected)} unexpected in all)")
    for name, tensor in expected.items():
        saved = ckpt.weights[name]
        if tuple(saved.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where} does not match this model: parameter '{name}' has shape {_fmt_shape(saved.shape)} "
                f"in the checkpoint but {_fmt_shape(tensor.shape)} here"
            )


# ------------------------------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA), as tensors and primitives only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_initialized():  # never touches the driver otherwise (safe in forked CPU workers)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

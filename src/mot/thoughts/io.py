"""Checkpoints of a Mixture of Thoughts: the trainable parts only, tied to the exact experts.

A checkpoint is a directory with ``config.json`` (the ``MoTConfig``, the router spec, the feature
encoder, and for every expert its spec, family, hidden size, layer count, vocabulary size and a
weight fingerprint) and ``model.safetensors`` (router + interaction layers).  It is written into a
temporary sibling directory and renamed into place, so a crash never leaves half a checkpoint; the
next save of the same directory removes what a crashed one left (``remove_stale_temporaries``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mot.errors import CheckpointError
from mot.io import atomic_directory, pid_alive

FORMAT = "mot-thoughts"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PROCESS_START = time.time()  # every temporary this process writes is newer


def _fingerprint(model: Any) -> str:
    from mot.experts.fingerprint import model_fingerprint

    return model_fingerprint(model)


def expert_record(model: Any, adapter: Any, spec: str) -> dict[str, Any]:
    return {"spec": spec, "family": adapter.family, "hidden_size": adapter.hidden_size,
            "num_layers": adapter.num_layers, "vocab_size": adapter.vocab_size,
            "fingerprint": _fingerprint(model)}


def save_pretrained(mot: Any, directory: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    from mot.routing import router_spec

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": mot.config.model_dump(mode="json"),
        "router": router_spec(mot.router),
        "encoder": {"name": getattr(mot.encoder, "name", type(mot.encoder).__name__), "dim": mot.encoder.dim},
        "shared_dim": mot.shared_dim,
        "experts": [expert_record(m, a, s) for m, a, s in zip(mot.experts, mot.adapters, mot.expert_specs, strict=True)],
    }
    remove_stale_temporaries(target)
    # temporaries named as remove_stale_temporaries expects: .NAME.tmp-PID-XXXXXXXX and .NAME.old-PID
    with atomic_directory(target, temp_prefix=f".{target.name}.tmp-{os.getpid()}-",
                          old_name=f".{target.name}.old-{os.getpid()}") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in mot.trainable_state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return target


def _stale_pattern(name: str) -> re.Pattern[str]:
    # what save_pretrained creates next to ``name``: ``.NAME.tmp-PID-XXXXXXXX`` (mkdtemp's 8 random
    # characters; before PIDs were recorded: ``.NAME.tmp-XXXXXXXX``) and ``.NAME.old-PID``
    return re.compile(rf"^\.{re.escape(name)}\.(?:tmp-(?:(?P<tmp_pid>\d+)-)?[a-z0-9_]{{8}}|old-(?P<old_pid>\d+))$")


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted ``save_pretrained`` of ``target`` left next to it, and return it.

    Only directories named exactly like its temporaries (``.NAME.tmp-PID-XXXXXXXX``, the older
    ``.NAME.tmp-XXXXXXXX``, and ``.NAME.old-PID`` once ``NAME`` exists again) count, and only when they
    are older than this process's first save (module import) and their writer (the PID in the name,
    when there is one) is not running: a save in progress in another process is never touched.
    """
    target = Path(target)
    pattern = _stale_pattern(target.name)
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        match = pattern.match(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        pid = match.group("tmp_pid") or match.group("old_pid")
        if match.group("old_pid") is not None and not target.exists():
            continue  # the previous checkpoint, renamed away just before a crash: the only copy
        try:
            if path.stat().st_mtime >= _PROCESS_START:
                continue
        except OSError:
            continue
        if pid is not None and pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a directory written by MixtureOfThoughts.save_pretrained")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not a text file (byte at offset {exc.start} is not UTF-8); expected the "
                              "config.json written by MixtureOfThoughts.save_pretrained") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(meta).__name__}; not a Mixture of "
                              "Thoughts checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Mixture of Thoughts checkpoint (format {meta.get('format')!r})")
    return meta


TRUST_ENV = "MOT_TRUST_REMOTE_CODE"


def trusts_remote_code() -> bool:
    """Whether this process trusts import-path routers without ``trust_remote_code=True`` being passed:
    ``MOT_TRUST_REMOTE_CODE=1`` (what ``mot --trust-remote-code ...`` sets for its one call)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def check_router_trust(meta: dict[str, Any], path: Path, trust_remote_code: bool) -> None:
    """Refuse (before anything is imported or loaded) a checkpoint that names its router by import path,
    unless the caller trusts it (``trust_remote_code=True``, or ``MOT_TRUST_REMOTE_CODE=1``)."""
    from mot.routing.registry import is_registered_router

    trusted = trust_remote_code or trusts_remote_code()
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    for key, spec in (("config.router_type", config.get("router_type", "mlp")), ("router", meta.get("router"))):
        if spec is None or is_registered_router(spec) or trusted:
            continue
        raise CheckpointError(
            f"{path}: {key} is {spec!r}, an import path: loading it would import and run that code; pass "
            "trust_remote_code=True (Python) or run `mot --trust-remote-code ...` only if you trust this "
            "checkpoint (registered routers need no flag)")


def from_pretrained(cls: type, directory: str | os.PathLike, experts: Sequence[Any] | None = None, *,
                    encoder: Any = None, trust_remote_code: bool = False, **load_kwargs: Any) -> Any:
    """``experts``: ``(model, tokenizer)`` pairs, or specs loaded with ``mot.experts.resolve_expert``
    (``load_kwargs`` go to it); None: the specs recorded in the checkpoint.  Every expert must match
    the checkpoint's record.

    A checkpoint whose router is given by import path (not a registered router name) would import and
    run that code: it is refused unless ``trust_remote_code=True``, like ``transformers``' flag of that
    name.  The registered routers (``linear``, ``mlp``, ...) need no flag."""
    from safetensors.torch import load_file

    from mot.experts import adapter_for
    from mot.thoughts.config import MoTConfig

    directory = Path(directory)
    meta = read_config(directory)
    check_router_trust(meta, directory / CONFIG_NAME, trust_remote_code)
    records = meta["experts"]
    if experts is None:
        experts = [record["spec"] for record in records]
    pairs, specs = [], []
    for item in experts:
        if isinstance(item, tuple | list):
            pairs.append(tuple(item))
            specs.append(None)
        else:
            from mot.experts.resolve import resolve_expert

            pairs.append(resolve_expert(item, **load_kwargs))
            specs.append(str(item))
    if len(pairs) != len(records):
        raise CheckpointError(f"{directory}: checkpoint has {len(records)} experts "
                              f"({', '.join(r['spec'] for r in records)}) but {len(pairs)} were given")
    for i, ((model, tokenizer), record) in enumerate(zip(pairs, records, strict=True)):
        adapter = adapter_for(model, tokenizer)
        got = expert_record(model, adapter, specs[i] or record["spec"])
        for key in ("family", "hidden_size", "num_layers", "vocab_size", "fingerprint"):
            if got[key] != record[key]:
                raise CheckpointError(
                    f"{directory}: expert {i} ({record['spec']!r}) does not match the checkpoint: {key} is "
                    f"{got[key]!r}, checkpoint has {record[key]!r}; load the experts it was trained with, in order")
    config = MoTConfig(**meta["config"])
    names = [s or r["spec"] for s, r in zip(specs, records, strict=True)]
    recorded = str(meta.get("encoder", {}).get("name", ""))
    if encoder is None and recorded.startswith("hashing-"):
        from mot.thoughts.features import make_encoder

        encoder = make_encoder(recorded)  # a hashing encoder is its name: rebuild the one it was trained with
    mot = cls([p[0] for p in pairs], [p[1] for p in pairs], config, expert_specs=names, encoder=encoder)
    if mot.encoder.dim != meta["encoder"]["dim"]:
        raise CheckpointError(f"{directory}: router features have dim {meta['encoder']['dim']} "
                              f"({meta['encoder']['name']}) but the encoder gives {mot.encoder.dim}")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found")
    state = load_file(str(weights), device=str(mot.device))
    try:
        mot.load_trainable_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: {str(exc).splitlines()[0]}") from exc
    return mot

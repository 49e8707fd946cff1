"""Self-contained multi-token checkpoints: ``s1/``, ``s2/``, ``ppo_final/`` (and any step checkpoint).

Layout::

    moe_meta.json          format, stage, MultiTokenConfig, backbone spec + fingerprint + family, metrics
    heads.safetensors      the residual heads (and untied LM-head copies)
    router.safetensors     the router
    tokenizer files        the backbone's tokenizer (save_pretrained)
    backbone/              the backbone itself, only with save_backbone=True

The backbone is referenced, not copied: loading resolves ``backbone.spec`` (hub id, local dir, GGUF,
packaged asset) and refuses a model whose fingerprint differs.  Directories are written to a temp dir and
renamed into place, so a checkpoint directory is complete or absent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mot.errors import CheckpointError
from mot.io import atomic_directory
from mot.multitoken.config import MultiTokenConfig
from mot.multitoken.model import HeadStack, MultiTokenModel

__all__ = ["META_FILE", "backbone_reference", "is_checkpoint", "load_multitoken", "save_multitoken",
           "write_metadata"]

log = logging.getLogger(__name__)

META_FILE = "moe_meta.json"
FORMAT = "mot-multitoken/1"
HEADS_FILE = "heads.safetensors"
ROUTER_FILE = "router.safetensors"
BACKBONE_DIR = "backbone"


def backbone_reference(model: MultiTokenModel) -> dict[str, Any]:
    """Spec, fingerprint and shape of the backbone (computed once per model and cached on it)."""
    cached = getattr(model, "_backbone_reference", None)
    if cached is not None:
        return cached
    from mot.experts.fingerprint import model_fingerprint

    cfg = model.backbone.config
    spec = model.backbone_spec
    if spec is not None and Path(spec).expanduser().exists():
        spec = str(Path(spec).expanduser().resolve())
    ref = {
        "spec": spec,
        "fingerprint": model_fingerprint(model.backbone),
        "family": getattr(cfg, "model_type", None),
        "hidden_size": model.heads.hidden_size,
        "vocab_size": model.heads.vocab_size,
        "quantization": getattr(model, "quantization", None),
    }
    model._backbone_reference = ref  # type: ignore[attr-defined]
    return ref


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def write_metadata(model: MultiTokenModel, directory: Path, *, stage: str, metrics: dict | None = None,
                   save_backbone: bool = False) -> None:
    """Write everything but the weights (meta, tokenizer, optional backbone) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    model.tokenizer.save_pretrained(str(directory))
    if save_backbone:
        model.backbone.save_pretrained(str(directory / BACKBONE_DIR))
        model.tokenizer.save_pretrained(str(directory / BACKBONE_DIR))
    meta = {
        "format": FORMAT,
        "stage": stage,
        "config": model.config.to_dict(),
        "backbone": {**backbone_reference(model), "saved": save_backbone},
        "files": {"heads": HEADS_FILE, "router": ROUTER_FILE, "backbone": BACKBONE_DIR if save_backbone else None},
        "metrics": metrics or {},
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _split_state(heads: HeadStack) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in heads.state_dict().items()}
    return ({k: v for k, v in state.items() if not k.startswith("router.")},
            {k: v for k, v in state.items() if k.startswith("router.")})


def save_multitoken(model: MultiTokenModel, directory: str | Path, *, stage: str, metrics: dict | None = None,
                    save_backbone: bool = False) -> Path:
    """Write a complete, self-contained checkpoint of ``model``'s heads and router to ``directory``."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(final, temp_name=f".tmp-{final.name}-{os.getpid()}",
                          old_name=f".tmp-old-{final.name}-{os.getpid()}") as tmp:
        write_metadata(model, tmp, stage=stage, metrics=metrics, save_backbone=save_backbone)
        heads_state, router_state = _split_state(model.heads)
        save_file(heads_state, str(tmp / HEADS_FILE))
        save_file(router_state, str(tmp / ROUTER_FILE))
    return final


def read_multitoken_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"'{directory}' is not a multi-token checkpoint (no {META_FILE}); give an s1/, s2/ "
                              "or ppo_final/ directory written by `mot multitoken train`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def load_multitoken(
    directory: str | Path,
    *,
    backbone=None,
    quantization: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    backbone_device: str = "cpu",
    heads_device: str | None = None,
    check_fingerprint: bool = True,
) -> MultiTokenModel:
    """Load a checkpoint directory alone: the backbone is resolved from its spec (or ``backbone/``), the
    tokenizer from the checkpoint, heads and router from safetensors.  ``backbone`` may be given as a loaded
    ``(model, tokenizer)`` pair to skip resolving."""
    directory = Path(directory)
    meta = read_multitoken_meta(directory)
    config = MultiTokenConfig.from_dict(meta["config"])
    ref = meta["backbone"]
    if backbone is None:
        from mot.experts.resolve import resolve_expert

        spec = str(directory / BACKBONE_DIR) if ref.get("saved") else ref.get("spec")
        if not spec:
            raise CheckpointError(f"{directory / META_FILE}: no backbone spec recorded; pass the backbone explicitly")
        backbone_model, _ = resolve_expert(spec, dtype=dtype, device=backbone_device, quantization=quantization)
    else:
        backbone_model = backbone[0]
        spec = ref.get("spec")
    if check_fingerprint and quantization is None:
        from mot.experts.fingerprint import model_fingerprint

        found = model_fingerprint(backbone_model)
        if found != ref.get("fingerprint"):
            raise CheckpointError(
                f"{directory}: the heads were trained on backbone {ref.get('spec')!r} with fingerprint "
                f"{str(ref.get('fingerprint'))[:12]}..., but the backbone loaded has {found[:12]}...; "
                "load the same backbone (or retrain the heads on this one)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = MultiTokenModel(backbone_model, tokenizer, config, heads_device=heads_device, backbone_spec=spec)
    model.quantization = quantization  # type: ignore[attr-defined]
    state: dict[str, torch.Tensor] = {}
    for name in (HEADS_FILE, ROUTER_FILE):
        try:
            state.update(load_file(str(directory / name)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {directory / name}: {exc}") from exc
    try:
        model.heads.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: heads/router weights do not fit this config: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.heads.eval()
    model.stage = meta.get("stage")  # type: ignore[attr-defined]
    model.meta = meta  # type: ignore[attr-defined]
    return model

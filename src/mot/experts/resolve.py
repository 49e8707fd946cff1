"""Turn an expert spec into a frozen HF causal LM and its tokenizer.

A spec is one of (checked in this order):

- a local directory in ``save_pretrained`` layout (``config.json`` + weights + tokenizer files);
- a ``.gguf`` file: dequantized once into a safetensors directory in the cache, keyed by the
  file's sha256, so later loads take seconds instead of a minute;
- a pip-packaged GGUF model (``mot.experts.assets.KNOWN_ASSETS``), by hub id or short alias: the
  official repository when it is in the HF cache or the hub is reachable, else the package;
- any other hub id: ``from_pretrained`` (online, or offline from the HF cache).

Offline (``HF_HUB_OFFLINE=1``) a model that is nowhere on the machine is a ``ModelNotFoundError``
that names the model and how to give a local path.  Nothing is downloaded or installed unless asked.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mot.errors import ModelNotFoundError, MotError, UsageError
from mot.experts.assets import (
    GGUFAsset,
    asset_gguf_path,
    cached_sha256,
    convert_gguf,
    converted_dir_for,
    default_cache_dir,
    find_asset,
    install_asset,
    is_converted,
)
from mot.experts.fingerprint import model_fingerprint
from mot.experts.quant import bnb_load_kwargs, check_quantization

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ExpertSpec", "parse_spec", "resolve_expert", "expert_source", "expert_info", "is_offline",
           "model_fingerprint"]

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


@dataclass(frozen=True)
class ExpertSpec:
    """A parsed expert spec: what kind of source it names, and where."""

    raw: str
    kind: str  # "directory" | "gguf" | "asset" | "hub"
    path: Path | None = None
    asset: GGUFAsset | None = None
    hub_id: str | None = None


def parse_spec(spec: str | os.PathLike) -> ExpertSpec:
    """Classify a spec without loading anything; ModelNotFoundError for paths that do not exist."""
    raw = os.fspath(spec).strip()
    if not raw:
        raise UsageError("empty expert spec: give a local directory, a .gguf file, or a hub id")
    path = Path(raw).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ExpertSpec(raw, "directory", path=path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ExpertSpec(raw, "gguf", path=ggufs[0])
        raise ModelNotFoundError(f"directory {path} has no config.json: expected a save_pretrained layout "
                                 "(config.json, weights, tokenizer) or a single .gguf file")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ExpertSpec(raw, "gguf", path=path)
        raise ModelNotFoundError(f"{path} is a file but not a .gguf: pass its directory (save_pretrained "
                                 "layout) or a .gguf file")
    looks_like_path = (raw.startswith(("/", "./", "../", "~", "\\")) or raw.lower().endswith(".gguf")
                       or os.sep + os.sep in raw or raw.count("/") > 1)
    if looks_like_path:
        raise ModelNotFoundError(f"no such file or directory: {path}")
    asset = find_asset(raw)
    if asset is not None:
        return ExpertSpec(raw, "asset", asset=asset, hub_id=asset.hub_id)
    if _HUB_ID.match(raw):
        return ExpertSpec(raw, "hub", hub_id=raw)
    raise ModelNotFoundError(f"cannot resolve expert {raw!r}: not a local path, a known asset, or a hub id")


def resolve_expert(
    spec: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    quantization: str | None = None,
    cache_dir: Path | None = None,
    local_files_only: bool | None = None,
    install: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``spec`` as ``(model in eval mode, tokenizer)``.

    ``local_files_only`` defaults to the ``HF_HUB_OFFLINE`` setting.  ``install=True`` lets a known
    asset pip-install its packages (as ``mot download`` does); otherwise a missing package is an
    error that says how to install it.
    """
    dtype = _as_dtype(dtype)
    quantization = check_quantization(quantization)
    source, offline = expert_source(spec, cache_dir=cache_dir, local_files_only=local_files_only,
                                    install=install)
    return _load(source, dtype=dtype, device=device, quantization=quantization, offline=offline)


def expert_source(
    spec: str | os.PathLike,
    *,
    cache_dir: Path | None = None,
    local_files_only: bool | None = None,
    install: bool = False,
) -> tuple[str | Path, bool]:
    """What ``from_pretrained`` should read for ``spec``: a local directory or a hub id.

    GGUF files and packaged assets are converted (once) here.  Returns ``(source, offline)``.
    """
    parsed = parse_spec(spec)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    offline = is_offline(local_files_only)
    if parsed.kind == "directory":
        return parsed.path, True
    if parsed.kind == "gguf":
        return _converted_gguf(parsed.path, cache), True
    if parsed.kind == "asset":
        asset = parsed.asset
        if _in_hf_cache(asset.hub_id):
            return asset.hub_id, True
        if not offline and _hub_reachable(asset.hub_id):
            return asset.hub_id, False
        return _converted_asset(asset, cache, install), True
    if _in_hf_cache(parsed.hub_id):
        return parsed.hub_id, True
    if offline:
        raise ModelNotFoundError(
            f"model {parsed.hub_id!r} is not available offline (not a local path, a packaged asset, or in the "
            "Hugging Face cache): pass a local directory (save_pretrained layout) or a .gguf file path, "
            f"or run `mot download {parsed.hub_id}` when online"
        )
    return parsed.hub_id, False


def expert_info(spec: str | os.PathLike | torch.nn.Module, **source_kwargs) -> dict:
    """Family, sizes and parameter count of an expert, read from its config and weight headers.

    Accepts a spec (no weights are loaded for local, GGUF or packaged experts) or a loaded model.
    """
    if isinstance(spec, torch.nn.Module):
        config = spec.config
        params = sum(p.numel() for p in spec.parameters())
        return _info(config, params) | {"fingerprint": model_fingerprint(spec)}
    from transformers import AutoConfig

    source, offline = expert_source(spec, **source_kwargs)
    config = AutoConfig.from_pretrained(source, local_files_only=offline)
    directory = Path(source) if isinstance(source, Path) else _hf_snapshot_dir(str(source))
    params = _count_safetensors_params(directory) if directory else None
    return _info(config, params) | {"source": str(source)}


# ---------------------------------------------------------------------------------------------- helpers


def _converted_gguf(path: Path, cache: Path) -> Path:
    sha256 = cached_sha256(path, cache)
    target = converted_dir_for(cache, path.name, sha256)
    if not is_converted(target):
        log.warning("converting %s to safetensors once (about a minute); cached in %s", path, target)
        convert_gguf(path, target, sha256=sha256)
    return target


def _converted_asset(asset: GGUFAsset, cache: Path, install: bool) -> Path:
    target = converted_dir_for(cache, asset.gguf_name, asset.sha256)
    if is_converted(target):
        return target
    gguf = install_asset(asset.name, cache_dir=cache) if install else asset_gguf_path(asset, cache)
    log.warning("converting %s (%s) to safetensors once (about a minute); cached in %s",
                asset.hub_id, asset.quant, target)
    convert_gguf(gguf, target, sha256=asset.sha256)
    if asset.multipart and gguf.parent == cache / "gguf":
        gguf.unlink(missing_ok=True)  # re-joined from the packages in seconds if ever needed again
    return target


def _load(source: str | Path, *, dtype: torch.dtype, device: str, quantization: str | None, offline: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    label = str(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline,
                                                     **bnb_load_kwargs(quantization, dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"could not load model {label!r}: {_first_line(exc)}") from exc
    if quantization is None:
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise MotError(f"could not move model {label!r} to device {device!r}: {_first_line(exc)}") from exc
    model.eval()
    return model, tokenizer


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


def is_offline(local_files_only: bool | None = None) -> bool:
    """Whether hub access is off: the explicit flag, else HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE."""
    if local_files_only is not None:
        return local_files_only
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hf_cache(hub_id: str) -> bool:
    return _hf_snapshot_dir(hub_id) is not None


def _hf_snapshot_dir(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # malformed ids raise validation errors: simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_reachable(hub_id: str) -> bool:
    try:
        from huggingface_hub import model_info

        model_info(hub_id, timeout=5)
    except Exception:
        return False
    return True


def _count_safetensors_params(directory: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                numel = 1
                for dim in f.get_slice(key).get_shape():
                    numel *= dim
                total += numel
    return total


def _info(config, params: int | None) -> dict:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names):
        return next((getattr(text, n) for n in names if getattr(text, n, None) is not None), None)

    return {
        "family": getattr(text, "model_type", None),
        "hidden_size": first("hidden_size", "n_embd"),
        "num_layers": first("num_hidden_layers", "n_layer"),
        "vocab_size": first("vocab_size"),
        "params": params,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

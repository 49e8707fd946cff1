"""Models from specs: one place that turns a ``--model`` spec into what the server, the chat and the
evaluators use.

``load_generators(name, spec)`` / ``load_generator(spec)`` give ``TextGenerator``s for every checkpoint kind
(``spec_kind`` tells which):

- a multi-token checkpoint (``moe_meta.json``: ``mot multitoken train``'s ``s1/``, ``s2/``, ...) -> verified
  multi-token decoding (exactly the backbone's output);
- a Mixture-of-Thoughts checkpoint (``config.json`` with format ``mot-thoughts``) -> one generator per mode,
  ``NAME:fast`` and ``NAME:full``;
- a moellama model, Trainer checkpoint (``step-*/``, ``best/``) or run directory (``config.json`` with
  ``model_type: moellama``, or a directory ``mot llama chat --model-path`` opens) -> moellama's own sampler;
- anything else -> an expert through ``mot.experts.resolve.resolve_expert`` (local dir, ``.gguf``, packaged
  GGUF, hub id), wrapped by the caller's ``hf`` factory (the server: its streaming ``HFGenerator``; the
  evaluators: ``HFModel``, which also scores).

Evaluation models (scorers):

``ModelPool.models(label, spec)`` gives the rows of one ``--model LABEL=SPEC``: an expert (hub id, local
directory, ``.gguf``, asset alias) as an ``HFModel``; a Mixture-of-Thoughts checkpoint as two rows,
``LABEL:fast`` and ``LABEL:full`` (``CKPT:fast`` / ``CKPT:full`` for one); a router checkpoint (``mot eval
train-router``) as one routed row.  Each expert is loaded once and shared by every row that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mot.errors import UsageError

if TYPE_CHECKING:  # imported where used: the server imports this module for its spec loader
    from mot.evaluation.hf_model import HFModel
    from mot.evaluation.routed import RoutedModel

MODES = ("fast", "full")

# Multi-token checkpoints are served verified (the backbone's own output, whatever the drafts), by default with
# up to this many prompt-lookup drafts per pass and a draft tree of this many nodes (`mot serve
# --multitoken-lookup/--multitoken-tree`): the fastest exact setting on the README's benchmark.
MULTITOKEN_LOOKUP = 5
MULTITOKEN_TREE = 3


def is_mot_checkpoint(path: str | Path) -> bool:
    """True for a directory written by ``MixtureOfThoughts.save_pretrained``."""
    import json

    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == "mot-thoughts"
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def split_mode(spec: str) -> tuple[str, str | None]:
    """``"CKPT:fast" -> ("CKPT", "fast")``; a spec without a mode suffix (or a path that exists as
    written) -> ``(spec, None)``."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in MODES and not Path(spec).expanduser().exists():
        return head, tail
    return spec, None


class ModelPool:
    """Builds evaluation models from specs, loading each expert once and sharing it between rows: an
    expert alone, every MoT checkpoint and every routed baseline over it use the same ``HFModel``."""

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 chat_template: bool = False, memoize: bool = False, routed: dict[str, Any] | None = None):
        self.device, self.dtype, self.batch_size, self.chat_template = device, dtype, batch_size, chat_template
        self.memoize = memoize
        self.routed = dict(routed or {})  # RoutedModel options of router rows (vote, answer_key, ...)
        self._experts: dict[str, HFModel] = {}

    def expert(self, spec: str) -> HFModel:
        if spec not in self._experts:
            from mot.evaluation.routed import Memoized, expert_scorer
            from mot.experts.resolve import resolve_expert

            model, tokenizer = resolve_expert(spec, dtype=self.dtype, device=self.device)
            scorer = expert_scorer(model, tokenizer, spec, batch_size=self.batch_size,
                                   chat_template=self.chat_template)
            self._experts[spec] = Memoized(scorer) if self.memoize else scorer
        return self._experts[spec]

    def mot(self, path: str | Path) -> tuple[Any, list[HFModel]]:
        from mot.thoughts import MixtureOfThoughts
        from mot.thoughts.io import read_config

        specs = [record["spec"] for record in read_config(Path(path).expanduser())["experts"]]
        scorers = [self.expert(s) for s in specs]
        mot = MixtureOfThoughts.from_pretrained(Path(path).expanduser(), [(s.model, s.tokenizer) for s in scorers])
        return mot.eval(), scorers

    def router(self, path: str | Path, name: str) -> RoutedModel:
        from mot.evaluation.routed import RoutedModel
        from mot.routing.checkpoint import load_router
        from mot.thoughts.features import make_encoder

        router, config = load_router(path)
        scorers = [self.expert(s) for s in config["experts"]]
        encoder = make_encoder(config["encoder"])
        limit = int(config.get("max_prompt_chars", 2048))

        def route(texts: list[str]) -> list[int]:
            with torch.no_grad():
                return [int(p) for p in router(encoder.encode([t[:limit] for t in texts])).primary.tolist()]

        return RoutedModel(name, route, scorers, **self.routed)

    def models(self, label: str, spec: str) -> dict[str, Any]:
        """The rows one ``--model LABEL=SPEC`` gives: a MoT checkpoint without a mode gives ``LABEL:fast``
        and ``LABEL:full``; ``CKPT:fast`` / ``CKPT:full`` one row; a router checkpoint (``mot eval
        train-router``) one routed row (``LABEL:voteN`` when the pool's ``routed`` options ask for a vote
        of N > 1 samples); anything else one expert."""
        from mot.evaluation.hf_model import HFModel
        from mot.routing.checkpoint import is_router_checkpoint
        from mot.thoughts.scoring import MoTModel

        path, mode = split_mode(spec)
        if is_mot_checkpoint(path):
            mot, scorers = self.mot(path)
            modes = [mode] if mode else list(MODES)
            return {(label if mode else f"{label}:{m}"): MoTModel(mot, scorers, mode=m, name=label,
                                                                batch_size=self.batch_size) for m in modes}
        if mode:
            raise UsageError(f"--model {spec!r}: ':{mode}' applies to Mixture-of-Thoughts checkpoints, and "
                             f"{path} is not one (no config.json with format 'mot-thoughts')")
        if is_router_checkpoint(path):
            vote = int(self.routed.get("vote", 1))
            row = f"{label}:vote{vote}" if vote > 1 else label  # its own row (and resume file) per vote
            return {row: self.router(path, row)}
        scorer = self.expert(spec)
        if label == spec:
            return {label: scorer}
        named = HFModel(scorer.model, scorer.tokenizer, name=label, batch_size=scorer.batch_size,
                        add_bos=scorer.add_bos, use_chat_template=scorer.use_chat_template)
        return {label: named}


# ------------------------------------------------------------------------------------- spec -> TextGenerator


@dataclass(frozen=True)
class LoadedGenerator:
    """One generator a spec gives, under the name it is offered as."""

    name: str
    generator: Any  # a mot.generation.TextGenerator
    kind: str  # "hf" | "mot" | "moellama" | "multitoken"


HFFactory = Callable[[Any, Any, str], Any]  # (model, tokenizer, name) -> TextGenerator


def _read_json(path: Path) -> dict | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_multitoken_checkpoint(path: str | Path) -> bool:
    path = Path(path).expanduser()
    return path.is_dir() and (path / "moe_meta.json").is_file()


def moellama_model_dir(path: str | Path) -> Path | None:
    """The directory holding the moellama weights that ``path`` names (a model directory, a Trainer checkpoint
    ``step-*/`` or ``best/``, or a run directory: its ``best/``, else its newest complete ``step-*``), as
    ``mot llama chat --model-path`` resolves it; None when ``path`` is no moellama model."""
    from mot.errors import MotError
    from mot.moellama.checkpoint import resolve_model_dir

    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    meta = _read_json(path / "config.json")
    if meta is not None and meta.get("model_type", "moellama") != "moellama":
        return None  # another architecture's model directory (a run directory's config.json has no model_type)
    try:
        directory = resolve_model_dir(path)
    except MotError:
        return None
    meta = _read_json(directory / "config.json")
    return directory if meta is not None and meta.get("model_type") == "moellama" else None


_HASHED_BYTES = 64 << 20  # files up to this size are hashed whole; larger ones by name, size and mtime


def spec_source(spec: str) -> str:
    """What a model spec points at, for an evaluation that resumes: a local directory or file by its
    contents (its ``checkpoint.json``, which records every file's SHA-256; else each file's bytes, or the
    size and mtime of files over 64 MiB), anything else (an asset alias, a hub id) by the spec itself, plus
    the ``:fast``/``:full`` mode.  So a row whose checkpoint was retrained in place, or whose label now names
    other weights, is noticed; a checkpoint copied elsewhere keeps its source."""
    import hashlib

    from mot.io import sha256_file

    path, mode = split_mode(spec)
    where = Path(path).expanduser()
    suffix = f":{mode}" if mode else ""
    if not where.exists():
        return spec
    digest = hashlib.sha256()
    record = where / "checkpoint.json"
    if where.is_dir() and record.is_file():
        digest.update(record.read_bytes())
    else:
        files = [where] if where.is_file() else sorted(f for f in where.rglob("*") if f.is_file())
        for f in files:
            stat = f.stat()
            digest.update(f"{f.relative_to(where) if f != where else f.name}\0{stat.st_size}\0".encode())
            digest.update((sha256_file(f) if stat.st_size <= _HASHED_BYTES else str(stat.st_mtime_ns)).encode())
    return f"sha256:{digest.hexdigest()[:16]}{suffix}"


def spec_kind(spec: str | Path) -> str:
    """``"multitoken"``, ``"mot"``, ``"moellama"`` or ``"hf"`` (an expert spec) for a model spec."""
    if is_multitoken_checkpoint(spec):
        return "multitoken"
    if is_mot_checkpoint(spec):
        return "mot"
    if moellama_model_dir(spec) is not None:
        return "moellama"
    return "hf"


def _torch_dtype(dtype: Any):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise UsageError(f"dtype {dtype!r}: expected float32, bfloat16 or float16")
    return value


def moellama_generator(model: Any, tokenizer: Any, name: str) -> Any:
    """moellama's own sampler, with the server extensions it does not define itself (yet)."""
    from mot.generation.hf import format_chat
    from mot.moellama.generate import MoeLlamaGenerator

    generator = MoeLlamaGenerator(model, tokenizer, name=name)
    if not hasattr(generator, "context_length"):
        generator.context_length = int(generator.model.cfg.max_seq_len)
    if not hasattr(generator, "count_tokens"):
        generator.count_tokens = lambda prompt: len(tokenizer.encode(format_chat(tokenizer, prompt), add_special_tokens=False))
    return generator


def _default_hf(model: Any, tokenizer: Any, name: str) -> Any:
    from mot.generation.hf import HFTextGenerator

    return HFTextGenerator(model, tokenizer, name)


def load_generators(name: str, spec: str, *, multitoken: dict[str, int] | None = None,
                    hf: HFFactory | None = None, **load_kwargs: Any) -> list[LoadedGenerator]:
    """The generators ``spec`` gives under ``name`` (see the module docstring): two for a MoT checkpoint
    (``name:fast``, ``name:full``), one otherwise.

    ``multitoken``: decoding options for multi-token checkpoints, ``lookup`` (default
    :data:`MULTITOKEN_LOOKUP`) and ``tree`` (default :data:`MULTITOKEN_TREE`).  ``hf``: how to wrap an expert
    ``(model, tokenizer, name)`` (default: ``mot.generation.hf.HFTextGenerator``).  ``load_kwargs``
    (``device``, ``dtype``, ...) go to the loaders."""
    path = Path(spec).expanduser()
    kind = spec_kind(spec)
    if kind == "multitoken":
        from mot.multitoken import MultiTokenGenerator, load_multitoken

        options = {"lookup": MULTITOKEN_LOOKUP, "tree": MULTITOKEN_TREE, **(multitoken or {})}
        if options["lookup"] < 0 or options["tree"] < 0:
            raise UsageError(f"multi-token lookup and tree must be >= 0 (0: off), got {options}")
        model = load_multitoken(path, backbone_device=load_kwargs.get("device") or "cpu")
        generator = MultiTokenGenerator(model, name=name, lookup=options["lookup"], tree=options["tree"])
        return [LoadedGenerator(name, generator, "multitoken")]
    if kind == "mot":
        mot = load_mot(path, **load_kwargs)
        return [LoadedGenerator(f"{name}:{mode}", mot.as_text_generator(mode, name=f"{name}:{mode}"), "mot")
                for mode in MODES]
    if kind == "moellama":
        from mot.moellama.checkpoint import load_model

        model, tokenizer, _ = load_model(path, device=load_kwargs.get("device"),
                                         dtype=_torch_dtype(load_kwargs.get("dtype")))
        return [LoadedGenerator(name, moellama_generator(model, tokenizer, name), "moellama")]
    from mot.experts.resolve import resolve_expert

    model, tokenizer = resolve_expert(spec, **load_kwargs)
    return [LoadedGenerator(name, (hf or _default_hf)(model, tokenizer, name), "hf")]


def load_mot(path: str | Path, **load_kwargs: Any) -> Any:
    """A Mixture-of-Thoughts checkpoint over the experts recorded in its ``config.json`` (``load_kwargs``:
    ``device``, ``dtype``, ... for them)."""
    from mot.thoughts import MixtureOfThoughts

    path = Path(path).expanduser()
    specs = [record["spec"] for record in (_read_json(path / "config.json") or {}).get("experts", [])]
    return MixtureOfThoughts.from_pretrained(path, specs, **load_kwargs)


def load_generator(spec: str, *, name: str | None = None, mode: str = "fast", **options: Any) -> Any:
    """One ``TextGenerator`` named ``name`` (default: the spec) for ``spec``; a MoT checkpoint gives the one
    in ``mode``.  ``options``: see :func:`load_generators`."""
    name = name or spec
    if spec_kind(spec) == "mot":
        if mode not in MODES:
            raise UsageError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        load_kwargs = {k: v for k, v in options.items() if k not in ("multitoken", "hf")}
        return load_mot(spec, **load_kwargs).as_text_generator(mode, name=name)
    return load_generators(name, spec, **options)[0].generator

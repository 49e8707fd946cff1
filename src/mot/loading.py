"""Evaluation models from specs: every model kind ``mot eval run`` and the benchmarks score.

``ModelPool.models(label, spec)`` gives the rows of one ``--model LABEL=SPEC``: an expert (hub id, local
directory, ``.gguf``, asset alias) as an ``HFModel``; a Mixture-of-Thoughts checkpoint as two rows,
``LABEL:fast`` and ``LABEL:full`` (``CKPT:fast`` / ``CKPT:full`` for one); a router checkpoint (``mot eval
train-router``) as one routed row.  Each expert is loaded once and shared by every row that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mot.errors import UsageError
from mot.evaluation.hf_model import HFModel
from mot.evaluation.routed import Memoized, RoutedModel, expert_scorer
from mot.thoughts.scoring import MoTModel

MODES = ("fast", "full")


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
                 chat_template: bool = False, memoize: bool = False):
        self.device, self.dtype, self.batch_size, self.chat_template = device, dtype, batch_size, chat_template
        self.memoize = memoize
        self._experts: dict[str, HFModel] = {}

    def expert(self, spec: str) -> HFModel:
        if spec not in self._experts:
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
        from mot.routing.checkpoint import load_router
        from mot.thoughts.features import make_encoder

        router, config = load_router(path)
        scorers = [self.expert(s) for s in config["experts"]]
        encoder = make_encoder(config["encoder"])
        limit = int(config.get("max_prompt_chars", 2048))

        def route(texts: list[str]) -> list[int]:
            with torch.no_grad():
                return [int(p) for p in router(encoder.encode([t[:limit] for t in texts])).primary.tolist()]

        return RoutedModel(name, route, scorers)

    def models(self, label: str, spec: str) -> dict[str, Any]:
        """The rows one ``--model LABEL=SPEC`` gives: a MoT checkpoint without a mode gives ``LABEL:fast``
        and ``LABEL:full``; ``CKPT:fast`` / ``CKPT:full`` one row; a router checkpoint (``mot eval
        train-router``) one routed row; anything else one expert."""
        from mot.routing.checkpoint import is_router_checkpoint

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
            return {label: self.router(path, label)}
        scorer = self.expert(spec)
        if label == spec:
            return {label: scorer}
        named = HFModel(scorer.model, scorer.tokenizer, name=label, batch_size=scorer.batch_size,
                        add_bos=scorer.add_bos, use_chat_template=scorer.use_chat_template)
        return {label: named}

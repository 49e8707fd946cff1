"""BabelTower C++ -> CUDA translation (Wen et al., ICML 2022, "BabelTower: Learning to
Auto-parallelized Program Translation"): translate every pair with a model and score the translations.

Each C++ function (detokenised by :func:`mot.data.load_babeltower`) is put into ``prompt_template``
(default ``"### Translate C++ to CUDA:\\n{source}\\n### CUDA:\\n"``, the template of
``MixtureOfThoughts.translate``); the reply is cut at the template's line markers (``###``) and a
fenced code block is unwrapped.  Scores come from :func:`mot.evaluation.metrics.score_translations`
against the detokenised CUDA references:

* ``bleu`` (BLEU-4, sacrebleu on code tokens), ``codebleu``, ``chrf``, ``rouge_l``, ``exact_match``,
  ``edit_similarity`` -- percentages;
* ``parableu_approx``: ParaBLEU as far as the paper's definition could be recovered (see
  :mod:`mot.evaluation.parableu`) -- deliberately not called ``parableu``;
* ``syntax_validity``: share of translations that tree-sitter-cuda parses without ERROR/MISSING nodes;
* ``compilation_accuracy``: share accepted by ``nvcc -c`` (with a prelude of common includes), or
  ``None`` when not checked or nvcc is absent (``compilation_status`` says which) -- the upstream MoT
  script's "compilation accuracy" was a syntax check; both are reported here, separately;
* ``expert_usage``: how many prompts each expert answered -- the router's primary expert for a Mixture
  of Thoughts, the single model otherwise -- and ``generation_mode`` (``fast``: route once, the primary
  expert generates; ``full``: expert interaction at every token; ``single_model``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mot.data.items import TranslationPair
from mot.generation import GenerationParams, template_stops

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "clean_translation",
    "evaluate_babeltower",
    "expert_usage",
    "generation_mode",
    "metrics_path",
    "predictions_path",
    "read_predictions",
    "score_babeltower",
    "template_stops",
]

DEFAULT_PROMPT_TEMPLATE = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n"
PARABLEU_NOTE = ("parableu_approx: ParaBLEU (Wen et al., ICML 2022) as far as its definition could be recovered; "
                 "see mot.evaluation.parableu -- not the paper's exact metric")


def metrics_path(output_dir: str | Path, split: str) -> Path:
    return Path(output_dir) / f"babeltower_{split}_metrics.json"


def predictions_path(output_dir: str | Path, split: str) -> Path:
    return Path(output_dir) / f"babeltower_{split}_predictions.json"


_FENCE = re.compile(r"```[\w+-]*[ \t]*(?:\n|$)")


def clean_translation(text: str, stops: Sequence[str] = ("###",)) -> str:
    """The code in a reply: cut at the first stop marker, a fenced block unwrapped, whitespace stripped.

    A fence opens a block when text follows it; a lone fence with code before it and nothing after
    (the model closing a block it never opened) is dropped, keeping the code.
    """
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[:min(cuts)]
    fences = list(_FENCE.finditer(text))
    if fences:
        first = fences[0]
        if len(fences) == 1 and text[:first.start()].strip() and not text[first.end():].strip():
            text = text[:first.start()]
        else:
            text = text[first.end():fences[1].start()] if len(fences) > 1 else text[first.end():]
    return text.strip()


def _mot_model(generator):
    """The ``MixtureOfThoughts`` behind a generator, or None for other model kinds."""
    model = getattr(generator, "model", None)
    return model if callable(getattr(model, "get_routing_info", None)) else None


def generation_mode(generator) -> str:
    """``fast`` / ``full`` for a Mixture of Thoughts, ``single_model`` otherwise."""
    return generator.mode if _mot_model(generator) is not None else "single_model"


def expert_usage(generator, prompts: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """(prompts answered per expert, the primary expert of each prompt).  A Mixture of Thoughts is
    asked for its deterministic routing; any other generator is one expert: itself."""
    mot = _mot_model(generator)
    if mot is None:
        name = str(getattr(generator, "name", "model"))
        return ({name: len(prompts)} if prompts else {}), [name] * len(prompts)
    usage = dict.fromkeys(mot.expert_specs, 0)
    primaries = [mot.get_routing_info(p)["primary_expert"] for p in prompts]
    for name in primaries:
        usage[name] += 1
    return usage, primaries


def evaluate_babeltower(generator, pairs: Sequence[TranslationPair], *, split: str, params: GenerationParams,
                        prompt_template: str = DEFAULT_PROMPT_TEMPLATE, check_compilation: bool = True,
                        batch_size: int = 8, compile_workers: int = 2, progress: bool = True) -> tuple[dict, list[dict]]:
    """Translate every pair with ``generator`` (a ``TextGenerator``) and score the translations.

    Returns ``(metrics, predictions)``: the metrics described in the module docstring, and one record
    per pair (``id``, ``source``, ``reference``, ``prediction``, ``primary_expert``, ``syntax_valid``,
    ``compiles``).
    """
    from rich.progress import track

    if not pairs:
        raise ValueError("no BabelTower pairs to evaluate")
    if "{source}" not in prompt_template:
        from mot.errors import UsageError

        raise UsageError(f"--prompt_template must contain '{{source}}', got {prompt_template!r}")
    stops = template_stops(prompt_template)
    params = GenerationParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_k=params.top_k,
                              top_p=params.top_p, stop=list(params.stop) or stops, seed=params.seed)
    prompts = [prompt_template.format(source=p.source) for p in pairs]
    usage, primaries = expert_usage(generator, prompts)
    predictions: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in track(starts, description="BabelTower translate", disable=not progress):
        replies = generator.generate(prompts[start:start + batch_size], params)
        predictions.extend(clean_translation(r, params.stop) for r in replies)
    metrics, records = score_babeltower(pairs, predictions, split=split, check_compilation=check_compilation,
                                        compile_workers=compile_workers, primaries=primaries)
    metrics.update(expert_usage=usage, generation_mode=generation_mode(generator),
                   model=str(getattr(generator, "name", "")), temperature=params.temperature, top_p=params.top_p,
                   max_new_tokens=params.max_new_tokens, seed=params.seed, prompt_template=prompt_template)
    return metrics, records


def score_babeltower(pairs: Sequence[TranslationPair], predictions: Sequence[str], *, split: str,
                     check_compilation: bool = True, compile_workers: int = 2,
                     primaries: Sequence[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Score ready-made ``predictions`` (one per pair, in order) against the pairs' CUDA references.

    Returns ``(metrics, records)`` as :func:`evaluate_babeltower` does, without the generation fields.
    """
    from mot.evaluation.code_metrics import cuda_syntax_valid
    from mot.evaluation.compile import compiles_cuda, nvcc_path
    from mot.evaluation.metrics import score_translations

    if len(predictions) != len(pairs):
        raise ValueError(f"{len(predictions)} predictions for {len(pairs)} BabelTower pairs")
    refs = [p.target or "" for p in pairs]
    metrics = score_translations(predictions, refs, check_compilation=False)
    compiled: list[bool | None] = [None] * len(predictions)
    if not check_compilation:
        status = "not checked"
    elif nvcc_path() is None:
        status = "unavailable: nvcc not found"
    else:
        status = "nvcc -c"
        with ThreadPoolExecutor(max(1, compile_workers)) as pool:
            compiled = list(pool.map(compiles_cuda, predictions))
    metrics["compilation_accuracy"] = (100.0 * sum(bool(c) for c in compiled) / len(compiled)
                                       if status == "nvcc -c" else None)
    metrics["compilation_status"] = status
    metrics.update(split=split, parableu_note=PARABLEU_NOTE)
    primaries = list(primaries) if primaries is not None else [None] * len(pairs)
    records = [{"id": pair.id, "source": pair.source, "reference": ref, "prediction": pred, "primary_expert": primary,
                "syntax_valid": cuda_syntax_valid(pred), "compiles": ok}
               for pair, ref, pred, primary, ok in zip(pairs, refs, predictions, primaries, compiled, strict=True)]
    return metrics, records


def read_predictions(path: str | Path, pairs: Sequence[TranslationPair]) -> list[str]:
    """Hypotheses for ``pairs`` from ``path``: a JSON list (or JSON lines) of strings, one per pair in
    order, or of records with ``prediction`` (and ``id``, matched to the pairs' ids when present) --
    the ``babeltower_<split>_predictions.json`` this command writes is one."""
    import json

    from mot.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the predictions file as UTF-8 text ({exc})") from None
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of predictions, got {type(items).__name__}")
    texts: list[str] = []
    by_id: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("prediction"), str):
            if "id" in item:
                by_id[str(item["id"])] = item["prediction"]
            texts.append(item["prediction"])
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise DataError(f"{path}: item {i} is {type(item).__name__}; expected a string or an object "
                            "with a 'prediction' string")
    if by_id and len(by_id) == len(items):
        missing = [p.id for p in pairs if p.id not in by_id]
        if missing:
            raise DataError(f"{path}: no prediction for pair {missing[0]!r} ({len(missing)} missing in all)")
        return [by_id[p.id] for p in pairs]
    if len(texts) < len(pairs):
        raise DataError(f"{path}: {len(texts)} predictions for {len(pairs)} pairs; give one per pair, in order")
    return texts[:len(pairs)]

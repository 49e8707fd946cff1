"""Evaluate several models on one benchmark, resumably, and write results JSON + a markdown report.

Layout of ``output_dir``::

    run.json              the settings this directory was started with (a resume must match them)
    partial/<model>.jsonl one scored item per line, appended (and fsynced) after every batch
    results.json          per-model metrics, the oracle row, settings
    report.md, results.png

A rerun with the same ``output_dir`` skips the items already in each model's ``partial`` file (a
torn last line from a kill is ignored and recomputed), so an interrupted run finishes where it
stopped; with greedy decoding the final results equal those of an uninterrupted run.

The oracle row ("best model per item") takes, for every item and metric, the best score any of the
models reached on that item and averages over items: an upper bound for a router that always picks
the right expert.  It is computed only over items every model has finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mot.data import benchmark_spec
from mot.errors import UsageError
from mot.evaluation import scoring
from mot.generation import GenerationParams
from mot.io import write_json

PRIMARY_METRIC = {"multiple_choice": "acc", "gsm8k": "exact_match", "math": "exact_match", "qa": "exact_match",
                  "code": "pass@1"}
DEFAULT_MC_STYLE = {"arc_challenge": "text"}  # others: "letters"


def model_slug(name: str) -> str:
    """A file name for a model name (hub ids and paths contain ``/``)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "model"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _append_jsonl(path: Path, records: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_partial(path: Path) -> dict[str, dict]:
    """Records already scored, by item id; an unparsable line (a torn write) is dropped."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # a write cut short: drop the torn tail so appends stay line-aligned
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                done[str(record["id"])] = record
    return done


def _write_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=2, ensure_ascii=False)


def _check_capability(task: str, name: str, model) -> None:
    if task == "multiple_choice" and not callable(getattr(model, "loglikelihood", None)):
        raise UsageError(f"model {name!r} cannot score log-likelihoods, which multiple-choice benchmarks need "
                         "(it must provide loglikelihood(requests), e.g. mot.evaluation.hf_model.HFModel)")
    if task != "multiple_choice" and not callable(getattr(model, "generate", None)):
        raise UsageError(f"model {name!r} has no generate(prompts, params); generative benchmarks need a TextGenerator")


def evaluate_batch(task: str, model, items: Sequence, settings: dict) -> list[dict]:
    """Score one batch of items with one model: one ``loglikelihood`` or ``generate`` call per batch."""
    if task == "multiple_choice":
        return scoring.score_multiple_choice(model, items, style=settings["mc_style"])
    params = GenerationParams(**settings["generation"])
    if task == "code":
        n = settings["num_samples"]
        params = dataclasses.replace(params, stop=scoring.code_stops(items[0]))
        replies = model.generate([it.prompt for it in items for _ in range(n)], params)
        return [scoring.score_code_item(it, replies[i * n:(i + 1) * n], settings["ks"], settings["timeout_s"])
                for i, it in enumerate(items)]
    prompts, stops = zip(*(scoring.generative_prompt(it, task) for it in items), strict=True)
    params = dataclasses.replace(params, stop=list(stops[0]))
    replies = model.generate(list(prompts), params)
    return [scoring.score_generation(it, r, task) for it, r in zip(items, replies, strict=True)]


def oracle_scores(per_model: Mapping[str, Mapping[str, dict]], item_ids: Sequence[str],
                  primary: str) -> dict | None:
    """Mean over items of the best per-item score across models, for every metric; ``picks`` counts how
    often each model was the (first) best on the primary metric."""
    if len(per_model) < 2:
        return None
    common = [i for i in item_ids if all(i in recs for recs in per_model.values())]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    picks = dict.fromkeys(per_model, 0)
    for item_id in common:
        metrics = {k for recs in per_model.values() for k in recs[item_id]["scores"]}
        for k in metrics:
            sums[k] = sums.get(k, 0.0) + max(float(recs[item_id]["scores"].get(k, 0.0)) for recs in per_model.values())
            counts[k] = counts.get(k, 0) + 1
        if primary in metrics:
            best = max(per_model, key=lambda m: float(per_model[m][item_id]["scores"].get(primary, 0.0)))
            picks[best] += 1
    return {"metrics": {k: sums[k] / counts[k] for k in sums}, "num_items": len(common), "picks": picks}


def run_evaluation(benchmark: str, models: Mapping[str, object], items: Sequence, output_dir: str | Path, *,
                   batch_size: int = 8, params: GenerationParams | None = None, num_samples: int = 1,
                   ks: Sequence[int] = (1, 5, 10), mc_style: str | None = None, timeout_s: float = 10.0,
                   resume: bool = True, progress: bool = True, report: bool = True,
                   on_batch: Callable[[str, int], None] | None = None,
                   selection: Mapping[str, Any] | None = None,
                   sources: Mapping[str, str] | None = None) -> dict:
    """Evaluate every model in ``models`` (name -> scorer/generator) on ``items`` of ``benchmark``.

    Returns the results dict also written to ``output_dir/results.json``.  ``params`` sets decoding
    for generative tasks (default greedy, 512 new tokens); ``num_samples`` completions per code
    task give pass@k for every ``k`` in ``ks`` with ``k <= num_samples``.  ``resume=False`` discards
    earlier partial results in ``output_dir``.  ``on_batch(model_name, items_done)`` is called after
    each saved batch.  ``selection`` says how ``items`` were chosen (e.g. ``{"limit": 60, "seed": 1234}``);
    it is kept in the results and the report, beside the number of items per subject.  ``sources`` says
    what each row is (``mot.loading.spec_source``: a checkpoint by its contents); they are kept in
    ``run.json``, and a resume refuses a row whose source changed (its saved items scored other weights).
    """
    spec = benchmark_spec(benchmark)
    task = spec.task
    if task not in PRIMARY_METRIC:
        raise UsageError(f"benchmark {spec.name!r} is evaluated with its own command (mot eval {spec.name}), "
                         "not mot eval run")
    if not models:
        raise UsageError("give at least one model (--model SPEC)")
    if batch_size < 1 or num_samples < 1:
        raise UsageError(f"batch_size and num_samples must be >= 1, got {batch_size} and {num_samples}")
    ids = [str(it.id) for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"item ids must be unique; {dup!r} occurs more than once")
    for name, model in models.items():
        _check_capability(task, name, model)
    if task == "multiple_choice" and items and all(it.answer_index is None for it in items):
        raise UsageError(f"benchmark {spec.name!r}: these items have no answer key (C-Eval's test split has "
                         "none); use --split val")

    params = params or GenerationParams(max_new_tokens=512)
    settings = {"benchmark": spec.name, "task": task,
                "mc_style": mc_style or DEFAULT_MC_STYLE.get(spec.name, "letters"),
                "generation": {k: v for k, v in dataclasses.asdict(params).items() if k != "stop"},
                "num_samples": num_samples, "ks": [k for k in ks if k <= num_samples] or [1],
                "timeout_s": timeout_s}
    out = Path(output_dir)
    partial_dir = out / "partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    known: dict[str, str] = {}
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
            known = dict(previous.get("models") or {})
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
            if resume:
                raise UsageError(f"{run_file}: unreadable ({e}); use another --output-dir or pass --no-resume "
                                 "to start over") from None
        if resume:
            diff = [k for k in settings if previous.get(k) != settings[k]]
            if diff:
                raise UsageError(f"{run_file}: this directory holds a run with different {', '.join(diff)}; "
                                 "use another --output-dir or pass --no-resume to start over")
            changed = [name for name, source in (sources or {}).items()
                       if name in known and known[name] != source
                       and (partial_dir / f"{model_slug(name)}.jsonl").exists()]
            if changed:
                name = changed[0]
                raise UsageError(f"{run_file}: row {name!r} was scored with {known[name]} and now names "
                                 f"{sources[name]} (other weights); use another --output-dir, another label, "
                                 "or pass --no-resume to score it again")
    if not resume:
        for name in models:
            (partial_dir / f"{model_slug(name)}.jsonl").unlink(missing_ok=True)
    known.update(sources or {})
    _write_json(run_file, {**settings, **({"models": dict(sorted(known.items()))} if known else {})})

    per_model: dict[str, dict[str, dict]] = {}
    position = {item_id: i for i, item_id in enumerate(ids)}
    with _progress(progress) as bar:
        for name, model in models.items():
            path = partial_dir / f"{model_slug(name)}.jsonl"
            done = read_partial(path)
            todo = [it for it in items if str(it.id) not in done]
            task_id = bar.add_task(f"{spec.name} · {name}", total=len(items), completed=len(items) - len(todo)) if bar else None
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                batch_settings = settings
                if params.seed is not None:  # a distinct seed per batch, fixed by the batch's first item
                    seed = params.seed + position[str(batch[0].id)]
                    batch_settings = {**settings, "generation": {**settings["generation"], "seed": seed}}
                records = evaluate_batch(task, model, batch, batch_settings)
                _append_jsonl(path, records)
                done.update((str(r["id"]), r) for r in records)
                if bar:
                    bar.update(task_id, advance=len(batch))
                if on_batch:
                    on_batch(name, len(items) - len(todo) + start + len(batch))
            per_model[name] = {i: done[i] for i in ids}

    primary = PRIMARY_METRIC[task] if task != "code" else f"pass@{settings['ks'][0]}"
    results = {
        "benchmark": spec.name, "task": task, "num_items": len(items), "primary_metric": primary,
        "settings": settings,
        "models": {name: {"metrics": scoring.mean_scores(recs[i] for i in ids), "num_items": len(recs),
                          "partial_file": str((partial_dir / f"{model_slug(name)}.jsonl").relative_to(out))}
                   for name, recs in per_model.items()},
        "oracle": oracle_scores(per_model, ids, primary),
    }
    subjects = Counter(it.subject for it in items if getattr(it, "subject", None))
    if subjects:
        results["subjects"] = dict(sorted(subjects.items()))
    if selection:
        results["selection"] = dict(selection)
    _write_json(out / "results.json", results)
    if report:
        from mot.evaluation.report import write_report

        results["report"] = {k: str(v) for k, v in write_report(results, out).items()}
        _write_json(out / "results.json", results)
    return results


class _progress:
    """A rich progress bar, or nothing when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

"""Parity oracle on a real expert: ``mot eval run``'s multiple-choice predictions against lm-evaluation-harness's
own ``hf`` model, per item, on the same items and the same prompts, with the time each path took.

Items: the first ``--per-subject`` questions of ``--subjects`` subjects of MMLU and of CMMLU, the subjects
spread evenly over the sorted subject files present (default 10 x 10 = 100 per benchmark).

1. ``mot eval run`` (``run_evaluation`` over the expert's ``HFModel``, as the CLI builds it) against
   lm-eval's ``hf`` (``HFLM`` over the same loaded weights) on a task whose documents are mot's own prompts
   (``harness.items_task``): the same ``(context, continuation)`` pairs go to both.
2. mot's lm-eval bridge (``MotLM``) against ``hf`` on mot's local task files (``mot_mmlu_<subject>``,
   ``mot_cmmlu_<subject>``: lm-eval's MMLU/CMMLU prompt formats), ``limit`` = ``--per-subject``.

Reports per-item agreement of the arg-max choice, the largest log-likelihood difference, accuracy and the
wall time of each path (one after the other in one process; fp32 on CPU).

    .venv/bin/python bench/harness_parity.py [--model smollm2-135m] [--subjects 10] [--per-subject 10]
        [--data ../shared/benchmarks] [--batch-size 8]

Writes bench/results/harness_parity.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from mot.data import load_benchmark
from mot.evaluation import harness
from mot.evaluation.runner import run_evaluation
from mot.evaluation.scoring import argmax
from mot.loading import ModelPool

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parents[1] / "shared" / "benchmarks"


def pick_subjects(files: list[Path], count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted list (first and last included)."""
    files = sorted(files)
    if count >= len(files):
        return files
    step = (len(files) - 1) / max(count - 1, 1)
    return [files[round(i * step)] for i in range(count)]


def compare(ours: dict[str, list[float]], theirs: dict[str, list[float]], answers: dict[str, int]) -> dict:
    ids = list(ours)
    assert set(ids) == set(theirs), "the two paths scored different items"
    agree = [argmax(ours[i]) == argmax(theirs[i]) for i in ids]
    diff = max(abs(a - b) for i in ids for a, b in zip(ours[i], theirs[i], strict=True))
    return {"items": len(ids), "agreement": sum(agree) / len(ids), "disagreements": [i for i, a in zip(ids, agree, strict=True) if not a],
            "max_abs_logprob_diff": diff,
            "acc_ours": sum(argmax(ours[i]) == answers[i] for i in ids) / len(ids),
            "acc_theirs": sum(argmax(theirs[i]) == answers[i] for i in ids) / len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory holding mmlu/ and cmmlu/")
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--per-subject", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "harness_parity.json")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.models.huggingface import HFLM

    pool = ModelPool(batch_size=args.batch_size)
    scorer = pool.expert(args.model)  # what `mot eval run --model SPEC` scores with
    hf = HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=args.batch_size)
    bridge = harness.MotLM(scorer, progress=False)
    report: dict = {"model": args.model, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                    "machine": platform.machine(), "benchmarks": {}}
    layouts = {"mmlu": ("test/*_test.csv", "_test"), "cmmlu": ("test/*.csv", "")}
    for benchmark, (pattern, suffix) in layouts.items():
        files = pick_subjects(list((args.data / benchmark).glob(pattern)), args.subjects)
        subjects = [f.stem.removesuffix(suffix) for f in files]
        items = [it for f in files for it in load_benchmark(benchmark, f)[:args.per_subject]]
        answers = {it.id: it.answer_index for it in items}
        row: dict = {"subjects": subjects, "items": len(items)}

        # 1. mot eval run vs lm-eval hf, mot's prompts
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            results = run_evaluation(benchmark, {"mot": scorer}, items, tmp, batch_size=args.batch_size,
                                     progress=False, report=False)
            mot_time = time.perf_counter() - start
            lines = (Path(tmp) / results["models"]["mot"]["partial_file"]).read_text().splitlines()
            ours = {r["id"]: r["logprobs"] for r in map(json.loads, lines)}
        start = time.perf_counter()
        out = harness.evaluate(hf, [harness.items_task("parity", items)], include_defaults=False, log_samples=True)
        hf_time = time.perf_counter() - start
        by_doc = harness.sample_logprobs(out, "parity")
        theirs = {it.id: by_doc[d] for d, it in enumerate(items)}
        row["mot_eval_run_vs_hf"] = {**compare(ours, theirs, answers), "seconds_mot_eval_run": mot_time,
                                     "seconds_lm_eval_hf": hf_time}

        # 2. the bridge vs lm-eval hf on the local task files (lm-eval's prompt format)
        tasks = [f"mot_{benchmark}_{s}" for s in subjects]
        data = {benchmark: args.data / benchmark}
        timings = {}
        samples = {}
        for name, lm in (("bridge", bridge), ("hf", hf)):
            start = time.perf_counter()
            out = harness.evaluate(lm, tasks, data=data, include_defaults=False, log_samples=True,
                                   limit=args.per_subject)
            timings[name] = time.perf_counter() - start
            samples[name] = {f"{s}/{d}": v for t, s in zip(tasks, subjects, strict=True)
                             for d, v in harness.sample_logprobs(out, t).items()}
        keyed_answers = {}
        for f, s in zip(files, subjects, strict=True):
            for d, it in enumerate(load_benchmark(benchmark, f)[:args.per_subject]):
                keyed_answers[f"{s}/{d}"] = it.answer_index
        row["bridge_vs_hf_lm_eval_format"] = {**compare(samples["bridge"], samples["hf"], keyed_answers),
                                              "seconds_bridge": timings["bridge"], "seconds_lm_eval_hf": timings["hf"]}
        report["benchmarks"][benchmark] = row
        for key in ("mot_eval_run_vs_hf", "bridge_vs_hf_lm_eval_format"):
            r = row[key]
            seconds = {k: round(v, 1) for k, v in r.items() if k.startswith("seconds")}
            print(f"{benchmark:6s} {key:28s} items {r['items']:4d}  agreement {r['agreement']:.2%}  "
                  f"max |dlogp| {r['max_abs_logprob_diff']:.2e}  acc {r['acc_ours']:.3f} / {r['acc_theirs']:.3f}  "
                  f"time {seconds}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

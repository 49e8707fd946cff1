"""How much of a multiple-choice table is answer-letter bias: for every row of a ``bench/mot_table.py`` run
(its per-item files), the letters it answers, and the scores a model with no knowledge gets from letters alone.

Small experts scored zero-shot on single-letter choices tend to answer one letter whatever the question;
then a row's accuracy is that letter's share of the gold answers, the oracle (best expert per item) is the
share of items whose gold letter some expert always says, and a router that "picks the right expert"
picks a letter.  This script makes that visible next to the table, from the files the table already wrote:

- per row: how often it answers each letter, the share of its most common letter, and "its letters by chance":
  the accuracy the same letter counts would have if the letter did not depend on the question
  (sum over letters of answer share x gold share);
- ``majority letter``: the most common gold letter among the *training* items of the run (the routers'
  training set, ``train/<bench>/partial``), answered for every evaluation item (a no-knowledge baseline
  chosen without looking at the evaluation items), with the paired bootstrap 95% CI of each row minus it;
- ``letter oracle``: the share of evaluation items whose gold letter is one some expert answers on (nearly)
  every item; equal to the oracle (best expert per item) when every expert answers one letter.

    python bench/mc_letter_bias.py --table bench/results/mot_table_cpu

writes ``bench/results/<table name>_letters.json`` and ``.md``.  No model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LETTERS = "ABCDEFGHIJ"


def analyse(table: Path, *, resamples: int = 2000, constant_share: float = 0.95) -> dict:
    from mot.evaluation.metrics import paired_bootstrap_ci
    from mot.evaluation.runner import read_partial

    out: dict = {"table": str(table), "constant_share": constant_share, "benchmarks": {}}
    for bench_dir in sorted(p for p in (table / "eval").iterdir() if (p / "results.json").is_file()):
        results = json.loads((bench_dir / "results.json").read_text(encoding="utf-8"))
        if results.get("task") != "multiple_choice":
            continue
        rows = {name: read_partial(bench_dir / entry["partial_file"]) for name, entry in results["models"].items()}
        ids = sorted(set.intersection(*(set(r) for r in rows.values())))
        if not ids:
            continue
        first = next(iter(rows.values()))
        gold = [int(first[i]["answer"]) for i in ids]
        gold_counts = Counter(gold)
        train_gold: Counter = Counter()
        train_dir = table / "train" / bench_dir.name / "partial"
        train_files = sorted(train_dir.glob("*.jsonl")) if train_dir.is_dir() else []
        if train_files:
            train_gold.update(int(r["answer"]) for r in read_partial(train_files[0]).values())
        majority = train_gold.most_common(1)[0][0] if train_gold else None
        per_row = {}
        for name, recs in rows.items():
            preds = [int(recs[i]["pred"]) for i in ids]
            counts = Counter(preds)
            top, top_n = counts.most_common(1)[0]
            acc = [float(recs[i]["scores"]["acc"]) for i in ids]
            # what its answers would score if its letter did not depend on the question (same letter counts)
            chance = sum(n * gold_counts[k] for k, n in counts.items()) / len(ids) ** 2
            per_row[name] = {"answers": {LETTERS[k]: v for k, v in sorted(counts.items())}, "letter_chance": chance,
                             "most_common": LETTERS[top], "most_common_share": top_n / len(ids),
                             "acc": sum(acc) / len(acc), "_acc": acc}
        experts = [n for n in results["models"] if ":" not in n and not n.startswith(("routerdc", "cluster"))]
        constant = {per_row[n]["most_common"] for n in experts if per_row[n]["most_common_share"] >= constant_share}
        letter_oracle = sum(LETTERS[g] in constant for g in gold) / len(ids)
        entry = {"num_items": len(ids), "gold": {LETTERS[k]: v for k, v in sorted(gold_counts.items())},
                 "training_gold": {LETTERS[k]: v for k, v in sorted(train_gold.items())},
                 "majority_letter": LETTERS[majority] if majority is not None else None,
                 "experts": experts, "constant_experts": sorted(constant),
                 "letter_oracle": letter_oracle,
                 "oracle": sum(max(float(rows[n][i]["scores"]["acc"]) for n in experts) for i in ids) / len(ids)}
        if majority is not None:
            base = [1.0 if g == majority else 0.0 for g in gold]
            entry["majority_letter_acc"] = sum(base) / len(base)
            for row in per_row.values():
                row["minus_majority_letter"] = paired_bootstrap_ci(row["_acc"], base, resamples=resamples)
        for row in per_row.values():
            del row["_acc"]
        entry["rows"] = per_row
        out["benchmarks"][bench_dir.name] = entry
    return out


def markdown(result: dict) -> str:
    lines = [f"# Answer letters in `{result['table']}`", ""]
    for bench, entry in result["benchmarks"].items():
        lines += [f"## {bench} ({entry['num_items']} items)", "",
                  f"Gold letters: {entry['gold']}; training items' gold letters: {entry['training_gold']} "
                  f"(majority letter {entry['majority_letter']}: acc {100 * entry.get('majority_letter_acc', 0):.1f}).",
                  f"Experts answering one letter on >= {100 * result['constant_share']:.0f}% of items: "
                  f"{', '.join(entry['constant_experts']) or 'none'}; share of items whose gold letter one of them "
                  f"says: {100 * entry['letter_oracle']:.1f} (the oracle, best expert per item: "
                  f"{100 * entry['oracle']:.1f}).", "",
                  "| row | acc | its letters by chance | answers | most common (share) | row minus majority letter, points [95% CI] |",
                  "|---|---:|---:|---|---|---:|"]
        for name, row in entry["rows"].items():
            ci = row.get("minus_majority_letter")
            diff = "" if ci is None else f"{100 * ci['diff']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"
            answers = " ".join(f"{k}:{v}" for k, v in row["answers"].items())
            lines.append(f"| {name} | {100 * row['acc']:.1f} | {100 * row['letter_chance']:.1f} | {answers} | {row['most_common']} "
                         f"({100 * row['most_common_share']:.0f}%) | {diff} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True, help="a bench/mot_table.py results directory")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--constant-share", type=float, default=0.95,
                        help="an expert answering one letter on at least this share of items counts as constant")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default: the table's, + _letters)")
    args = parser.parse_args()
    if not (args.table / "eval").is_dir():
        sys.exit(f"error: {args.table} has no eval/ directory; give a bench/mot_table.py results directory")
    result = analyse(args.table, resamples=args.resamples, constant_share=args.constant_share)
    stem = args.out or args.table.parent / f"{args.table.name}_letters"
    from mot.io import write_json, write_text

    write_json(stem.with_suffix(".json"), result)
    write_text(stem.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

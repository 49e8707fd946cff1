"""bench/mc_letter_bias.py on a synthetic table: constant-letter experts make the oracle a letter count."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "mc_letter_bias.py"


def _load():
    spec = importlib.util.spec_from_file_location("mc_letter_bias", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _partial(path: Path, gold: list[int], preds: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"s/{i}", "answer": g, "pred": p,
                                        "scores": {"acc": float(g == p)}}) + "\n"
                            for i, (g, p) in enumerate(zip(gold, preds, strict=True))))


def test_constant_letter_experts_make_the_oracle_a_letter_count(tmp_path):
    gold = [0, 1, 2, 3, 0, 1, 2, 0, 0, 3, 1, 2]
    rows = {"a": [0] * 12, "b": [1] * 12, "mot:full": [0, 1, 2, 3, 1, 1, 1, 1, 0, 0, 0, 0]}
    bench = tmp_path / "eval" / "mmlu"
    for name, preds in rows.items():
        _partial(bench / "partial" / f"{name}.jsonl", gold, preds)
    (bench / "results.json").write_text(json.dumps({"task": "multiple_choice", "models": {
        name: {"partial_file": f"partial/{name}.jsonl"} for name in rows}}))
    _partial(tmp_path / "train" / "mmlu" / "partial" / "a.jsonl", [2, 2, 2, 1], [0] * 4)  # training majority: C
    entry = _load().analyse(tmp_path, resamples=200)["benchmarks"]["mmlu"]
    assert entry["experts"] == ["a", "b"] and entry["constant_experts"] == ["A", "B"]
    assert entry["oracle"] == entry["letter_oracle"] == 7 / 12  # items whose gold is A or B
    assert entry["majority_letter"] == "C" and entry["majority_letter_acc"] == 3 / 12
    mot = entry["rows"]["mot:full"]
    assert mot["answers"] == {"A": 5, "B": 5, "C": 1, "D": 1} and mot["acc"] == 6 / 12
    assert abs(mot["minus_majority_letter"]["diff"] - 3 / 12) < 1e-9
    assert abs(mot["letter_chance"] - (5 * 4 + 5 * 3 + 1 * 3 + 1 * 2) / 144) < 1e-9  # gold: A4 B3 C3 D2
    assert entry["rows"]["a"]["letter_chance"] == entry["rows"]["a"]["acc"] == 4 / 12  # constant: chance is all

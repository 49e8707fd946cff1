"""The evaluation runner: resume after an interruption, oracle row, report files, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mot.data import load_benchmark
from mot.errors import UsageError
from mot.evaluation.runner import model_slug, run_evaluation
from mot.evaluation.scoring import LogLikelihood
from mot.generation import GenerationParams

FIX = Path(__file__).resolve().parents[1] / "fixtures"


class Interrupted(RuntimeError):
    pass


class HashScorer:
    """Deterministic pseudo log-likelihoods; counts the contexts it scores; can fail after N calls."""

    def __init__(self, name: str, fail_after: int | None = None):
        self.name, self.fail_after = name, fail_after
        self.contexts: list[str] = []
        self.calls = 0

    def loglikelihood(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted(f"{self.name} killed")
        self.calls += 1
        self.contexts.extend(dict.fromkeys(c for c, _ in requests))
        out = []
        for context, cont in requests:
            digest = hashlib.sha256(f"{self.name}|{context}|{cont}".encode()).digest()
            out.append(LogLikelihood(-digest[0] / 16.0, 1, False))
        return out


class AnswerBook:
    """A TextGenerator stub answering GSM8K questions from a dict (question -> reply)."""

    def __init__(self, name: str, replies: dict[str, str]):
        self.name, self.replies = name, replies
        self.prompts: list[str] = []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        return [next((r for q, r in self.replies.items() if q in p), "no idea") for p in prompts]

    def stream(self, prompt, params):
        yield from self.generate([prompt], params)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu")
    full = run_evaluation("mmlu", {"a": HashScorer("a"), "b": HashScorer("b")}, items, tmp_path / "full",
                          batch_size=1, progress=False)

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        run_evaluation("mmlu", {"a": HashScorer("a", fail_after=2), "b": HashScorer("b")}, items, out,
                       batch_size=1, progress=False)
    saved = (out / "partial" / f"{model_slug('a')}.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in saved] == ["abstract_algebra/0", "abstract_algebra/1"]

    a, b = HashScorer("a"), HashScorer("b")
    resumed = run_evaluation("mmlu", {"a": a, "b": b}, items, out, batch_size=1, progress=False)
    assert a.calls == 2 and len(b.contexts) == 4  # a skips its two saved items; b had not started
    assert not any("cyclic group" in c or "under addition" in c for c in a.contexts)
    assert resumed["models"] == full["models"]
    assert resumed["oracle"] == full["oracle"]
    for name in ("a", "b"):
        def ids(run_dir: Path, name: str = name) -> list[str]:
            lines = (run_dir / "partial" / f"{model_slug(name)}.jsonl").read_text().splitlines()
            return sorted(json.loads(x)["id"] for x in lines)

        assert ids(out) == ids(tmp_path / "full")

    again = HashScorer("a")  # a complete run directory recomputes nothing
    run_evaluation("mmlu", {"a": again, "b": HashScorer("b")}, items, out, batch_size=1, progress=False)
    assert again.calls == 0


def test_torn_last_line_is_dropped_and_recomputed(tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu")
    first = run_evaluation("mmlu", {"a": HashScorer("a")}, items, tmp_path, batch_size=2, progress=False, report=False)
    partial = tmp_path / "partial" / f"{model_slug('a')}.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:25])  # a kill in the middle of the last write
    scorer = HashScorer("a")
    second = run_evaluation("mmlu", {"a": scorer}, items, tmp_path, batch_size=2, progress=False, report=False)
    assert scorer.calls == 1 and len(scorer.contexts) == 1
    assert second["models"]["a"]["metrics"] == first["models"]["a"]["metrics"]
    assert len(partial.read_text().splitlines()) == 4


def test_oracle_takes_the_best_model_per_item_and_report_lists_rows(tmp_path):
    items = load_benchmark("gsm8k", FIX / "gsm8k")
    questions = [it.question for it in items]
    first = AnswerBook("first", {questions[0]: "#### 10", questions[1]: "so 2,500"})
    last = AnswerBook("last", {questions[2]: "It is -3 now", questions[1]: "2,400"})
    res = run_evaluation("gsm8k", {"first": first, "last": last}, items, tmp_path, batch_size=2, progress=False,
                         params=GenerationParams(max_new_tokens=32))
    assert res["primary_metric"] == "exact_match"
    assert res["models"]["first"]["metrics"] == {"exact_match": pytest.approx(2 / 3)}
    assert res["models"]["last"]["metrics"] == {"exact_match": pytest.approx(1 / 3)}
    assert res["oracle"]["metrics"] == {"exact_match": 1.0}
    assert res["oracle"]["picks"] == {"first": 2, "last": 1}
    assert first.prompts[0] == f"Question: {questions[0]}\nAnswer:"

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"]["first"]["metrics"]["exact_match"] == pytest.approx(2 / 3)
    report = (tmp_path / "report.md").read_text()
    assert "| model | items | exact_match |" in report
    assert "| first | 3 | 66.7 |" in report
    assert "| last | 3 | 33.3 |" in report
    assert "| oracle (best model per item) | 3 | 100.0 |" in report
    assert "![exact_match per model](results.png)" in report
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(x) for x in (tmp_path / "partial" / f"{model_slug('last')}.jsonl").read_text().splitlines()]
    assert [(r["extracted"], r["scores"]["exact_match"]) for r in records] == [(None, 0.0), ("2400", 0.0), ("-3", 1.0)]


def test_changed_settings_refuse_to_mix_with_a_previous_run(tmp_path):
    items = load_benchmark("gsm8k", FIX / "gsm8k")
    book = AnswerBook("m", {})
    run_evaluation("gsm8k", {"m": book}, items, tmp_path, progress=False, report=False,
                   params=GenerationParams(max_new_tokens=8))
    with pytest.raises(UsageError, match=r"run\.json: this directory holds a run with different generation"):
        run_evaluation("gsm8k", {"m": book}, items, tmp_path, progress=False, params=GenerationParams(max_new_tokens=9))
    n = len(book.prompts)
    run_evaluation("gsm8k", {"m": book}, items, tmp_path, progress=False, resume=False, report=False,
                   params=GenerationParams(max_new_tokens=9))
    assert len(book.prompts) == n + 3  # --no-resume starts over


def test_capability_and_benchmark_checks(tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu", limit=1)
    with pytest.raises(UsageError, match="cannot score log-likelihoods"):
        run_evaluation("mmlu", {"gen": AnswerBook("gen", {})}, items, tmp_path, progress=False)
    with pytest.raises(UsageError, match="evaluated with its own command"):
        run_evaluation("babeltower", {"gen": AnswerBook("gen", {})}, [], tmp_path, progress=False)


def test_code_benchmark_pass_at_k_with_the_sandbox(tmp_path):
    pytest.importorskip("mot.evaluation.sandbox")
    items = load_benchmark("humaneval", FIX / "humaneval")

    class Coder:
        name = "coder"

        def generate(self, prompts, params):
            assert params.stop and "\ndef " in params.stop
            solutions = {it.prompt: it.canonical_solution for it in items}
            # first task: one right and one wrong sample; second task: both right
            return [solutions[p] if (p == items[1].prompt or i % 2 == 0) else "    return None\n"
                    for i, p in enumerate(prompts)]

    res = run_evaluation("humaneval", {"coder": Coder()}, items, tmp_path, num_samples=2, ks=(1, 2, 10),
                         progress=False, params=GenerationParams(temperature=0.8, seed=1))
    assert res["settings"]["ks"] == [1, 2]
    assert res["models"]["coder"]["metrics"] == {"pass@1": 0.75, "pass@2": 1.0}
    assert "| coder | 2 | 75.0 | 100.0 |" in (tmp_path / "report.md").read_text()


def test_hf_models_end_to_end_on_arc_fixture(tmp_path, load_tiny):
    from mot.evaluation.hf_model import HFModel

    items = load_benchmark("arc_challenge", FIX / "arc_challenge")
    models = {f: HFModel(*load_tiny(f), name=f) for f in ("gpt2", "llama")}
    res = run_evaluation("arc_challenge", models, items, tmp_path, batch_size=2, progress=False)
    assert res["settings"]["mc_style"] == "text"
    for name in models:
        m = res["models"][name]["metrics"]
        assert set(m) == {"acc", "acc_norm"} and all(v in (0.0, 1 / 3, 2 / 3, 1.0) for v in m.values())
    assert res["oracle"]["metrics"]["acc"] >= max(res["models"][n]["metrics"]["acc"] for n in models)


def test_cli_run_resolves_local_expert_dirs(tmp_path, tiny_experts):
    from typer.testing import CliRunner

    from mot.cli.eval_cmd import app, parse_model_arg

    assert parse_model_arg("tiny=some/dir") == ("tiny", "some/dir")
    assert parse_model_arg("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--benchmark", "mmlu", "--model", f"g={tiny_experts['gpt2'].path}",
                                      "--model", f"q={tiny_experts['qwen2'].path}", "--data", str(FIX / "mmlu"),
                                      "--limit", "2", "--output-dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["models"]) == {"g", "q"} and saved["num_items"] == 2
    assert "oracle" in result.output and (out / "report.md").exists()


def _synthetic_mmlu(root: Path, subjects: int = 6, per_subject: int = 10) -> Path:
    test = root / "test"
    test.mkdir(parents=True)
    for s in range(subjects):
        rows = [f"Question {s}-{i}?,a,b,c,d,{'ABCD'[i % 4]}" for i in range(per_subject)]
        (test / f"subject{s}_test.csv").write_text("\n".join(rows) + "\n")
    return root


def test_limit_samples_across_subjects_seeded_and_nested(tmp_path):
    root = _synthetic_mmlu(tmp_path / "mmlu")
    everything = load_benchmark("mmlu", root)
    first = load_benchmark("mmlu", root, limit=6)
    assert {it.subject for it in first} == {"subject0"}  # the old behaviour: one subject
    sample = load_benchmark("mmlu", root, limit=6, sample_seed=1234)
    assert len(sample) == 6 and len({it.subject for it in sample}) == 6
    assert [it.id for it in sample] == [it.id for it in everything if it in sample]  # file order kept
    assert sample == load_benchmark("mmlu", root, limit=6, sample_seed=1234)
    assert sample != load_benchmark("mmlu", root, limit=6, sample_seed=7)
    bigger = load_benchmark("mmlu", root, limit=20, sample_seed=1234)
    assert set(it.id for it in sample) <= set(it.id for it in bigger)
    counts = [sum(it.subject == f"subject{s}" for it in bigger) for s in range(6)]
    assert max(counts) - min(counts) <= 1
    assert load_benchmark("mmlu", root, limit=1000, sample_seed=1) == everything


def test_test_split_partition_is_disjoint_fixed_and_complete(tmp_path):
    root = _synthetic_mmlu(tmp_path / "mmlu", subjects=4, per_subject=50)
    everything = {it.id for it in load_benchmark("mmlu", root)}
    train = {it.id for it in load_benchmark("mmlu", root, split="test[train]")}
    held = {it.id for it in load_benchmark("mmlu", root, split="test[eval]")}
    assert not train & held and train | held == everything
    assert 0.15 < len(train) / len(everything) < 0.45
    # membership depends on the item alone: a subset of the files gives the same assignment
    only = {it.id for it in load_benchmark("mmlu", root / "test" / "subject1_test.csv", split="test[train]")}
    assert only == {i for i in train if i.startswith("subject1/")}


def test_cli_limit_reports_the_subjects_it_sampled(tmp_path, tiny_experts):
    from typer.testing import CliRunner

    from mot.cli.eval_cmd import app

    root = _synthetic_mmlu(tmp_path / "mmlu")
    result = CliRunner().invoke(app, ["run", "-b", "mmlu", "--data", str(root), "--model", str(tiny_experts["gpt2"].path),
                                      "--limit", "4", "-o", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 items sampled from 4 subjects (seed 1234)" in result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["selection"] == {"limit": 4, "seed": 1234}
    assert len(saved["subjects"]) == 4 and sum(saved["subjects"].values()) == 4
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- items: 4 sampled across subjects with seed 1234 (`--limit`)" in report
    named = [line for line in report.splitlines() if line.startswith("- subjects (4): ")]
    assert len(named) == 1 and all(f"{name} (1)" in named[0] for name in saved["subjects"])


def test_real_mixed_configs_load_and_differ_only_in_the_capacity_control():
    from mot.config import load_config
    from mot.thoughts.run_config import MoTRunConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    mot = load_config(root / "mot_real_mixed.json", MoTRunConfig)
    control = load_config(root / "mot_real_mixed_control.json", MoTRunConfig)
    assert mot.mot_config.peers == "routed" and control.mot_config.peers == "self"
    assert mot.data == control.data and mot.training == control.training
    assert {(s.name, s.split) for s in mot.data.sources} == {("gsm8k", "train"), ("mmlu", "test[train]"),
                                                             ("cmmlu", "test[train]")}


def test_resume_refuses_a_row_whose_source_changed(tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu")
    first = run_evaluation("mmlu", {"a": HashScorer("a")}, items, tmp_path, batch_size=2, progress=False,
                           report=False, sources={"a": "sha256:one"})
    assert json.loads((tmp_path / "run.json").read_text())["models"] == {"a": "sha256:one"}
    # same source: resumed, nothing scored again
    again = HashScorer("a")
    same = run_evaluation("mmlu", {"a": again}, items, tmp_path, batch_size=2, progress=False, report=False,
                          sources={"a": "sha256:one"})
    assert again.calls == 0 and same["models"] == first["models"]
    # other weights under the same row name: one error naming the row, both sources and the ways out
    other = HashScorer("b")
    with pytest.raises(UsageError) as err:
        run_evaluation("mmlu", {"a": other}, items, tmp_path, batch_size=2, progress=False, report=False,
                       sources={"a": "sha256:two"})
    message = str(err.value)
    assert "'a'" in message and "sha256:one" in message and "sha256:two" in message and "--no-resume" in message
    assert other.calls == 0
    assert len((tmp_path / "partial" / f"{model_slug('a')}.jsonl").read_text().splitlines()) == len(items)
    # --no-resume scores it again and records the new source; a new row beside it is fine
    rescored = run_evaluation("mmlu", {"a": other, "c": HashScorer("c")}, items, tmp_path, batch_size=2,
                              progress=False, report=False, resume=False, sources={"a": "sha256:two", "c": "x"})
    assert other.calls > 0 and rescored["models"]["a"] != first["models"]["a"]
    assert json.loads((tmp_path / "run.json").read_text())["models"] == {"a": "sha256:two", "c": "x"}
    # a directory from before sources were recorded resumes and starts recording them
    old = tmp_path / "old"
    run_evaluation("mmlu", {"a": HashScorer("a")}, items, old, batch_size=2, progress=False, report=False)
    assert "models" not in json.loads((old / "run.json").read_text())
    resumed = HashScorer("a")
    run_evaluation("mmlu", {"a": resumed}, items, old, batch_size=2, progress=False, report=False,
                   sources={"a": "sha256:one"})
    assert resumed.calls == 0 and json.loads((old / "run.json").read_text())["models"] == {"a": "sha256:one"}


def test_spec_source_follows_the_weights_not_the_path(tmp_path):
    import shutil

    from mot.loading import spec_source

    ckpt = tmp_path / "run" / "step-000010"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text('{"format": "mot-thoughts"}')
    (ckpt / "trainable.safetensors").write_bytes(b"\x00" * 64)
    before = spec_source(str(ckpt))
    assert before.startswith("sha256:") and spec_source(str(ckpt) + ":full") == before + ":full"
    shutil.copytree(ckpt, tmp_path / "copy")
    assert spec_source(str(tmp_path / "copy")) == before  # moved or copied: the same weights
    (ckpt / "trainable.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # retrained in place, same size
    assert spec_source(str(ckpt)) != before
    (ckpt / "checkpoint.json").write_text('{"files": {"trainable.safetensors": "ab"}}')  # the Trainer's record
    recorded = spec_source(str(ckpt))
    (ckpt / "trainable.safetensors").write_bytes(b"\x02" * 64)
    assert spec_source(str(ckpt)) == recorded  # the record, not the bytes, when there is one
    assert spec_source("smollm2-135m") == "smollm2-135m"  # aliases and hub ids are their own source


def test_cli_resume_refuses_a_label_that_now_names_other_weights(tmp_path, tiny_experts, capsys):
    from mot.cli.main import main

    root = _synthetic_mmlu(tmp_path / "mmlu", subjects=2, per_subject=2)
    out = tmp_path / "out"

    def run(path):
        return main(["eval", "run", "-b", "mmlu", "--data", str(root), "--model", f"m={path}", "-o", str(out),
                     "--no-progress"])

    assert run(tiny_experts["gpt2"].path) == 0
    assert run(tiny_experts["gpt2"].path) == 0  # resumed
    kept = (out / "partial" / f"{model_slug('m')}.jsonl").read_text()
    capsys.readouterr()
    assert run(tiny_experts["llama"].path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 'm' was scored with sha256:" in err[0] and "--no-resume" in err[0], err
    assert (out / "partial" / f"{model_slug('m')}.jsonl").read_text() == kept  # nothing lost

"""`mot llama evaluate`: perplexity, exact-answer tasks, samples, a real benchmark, and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mot.moellama.config import MoeLlamaFileConfig
from mot.moellama.evaluate import (
    EvalOptions,
    arithmetic_items,
    evaluate_checkpoint,
    first_integer,
    letter_counting_items,
    score_tasks,
    task_prompt,
)
from tests.moellama.conftest import CORPUS, tiny_model


def test_tasks_have_programmatic_answers_and_exact_scoring():
    letters = letter_counting_items(50, seed=0)
    for item in letters:
        letter, word = item.question.split('"')[1], item.question.split('"')[3]
        assert item.answer == word.count(letter)
    assert any(it.answer == 0 for it in letters) and any(it.answer >= 2 for it in letters)
    sums = arithmetic_items(50, seed=0)
    for item in sums:
        a, op, b = item.question.removeprefix("What is ").removesuffix("?").split()
        assert item.answer == eval(f"{int(a)} {op} {int(b)}")  # noqa: S307 (digits and one operator)
    assert letter_counting_items(5, seed=1) == letter_counting_items(5, seed=1) != letter_counting_items(5, seed=2)
    assert task_prompt(sums[0], sums[1:3]).count("Q: ") == 3 and task_prompt(sums[0], []).endswith("A:")
    assert first_integer(" 12 apples, 3") == 12 and first_integer(" -6\n") == -6 and first_integer(" none") is None

    class Oracle:  # answers right for letters, off by one for sums
        def generate(self, prompts, params):
            assert params.greedy and "\n" in params.stop
            return [f" {next(it.answer + (it.kind == 'arithmetic') for it in letters + sums if it.question in p)}"
                    for p in prompts]

    assert all(r["correct"] for r in score_tasks(Oracle(), letters[:4], []))
    assert not any(r["correct"] for r in score_tasks(Oracle(), sums[:4], []))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mot.moellama.hf import MoeLlamaConfig, MoeLlamaForCausalLM
    from mot.moellama.tokenizer import train_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llama-eval")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 2}) + "\n" for t in CORPUS[:12]), encoding="utf-8")
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    model = tiny_model(seed=3, vocab_size=len(tokenizer), max_seq_len=128)
    hf = MoeLlamaForCausalLM(MoeLlamaConfig.from_model_config(model.cfg))
    hf.model.load_state_dict(model.state_dict())
    path = root / "model"
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    arc = root / "ARC-Challenge-Test.jsonl"
    arc.write_text("".join(json.dumps({"id": f"q{i}", "question": {"stem": f"Which is {w}?", "choices": [
        {"text": w, "label": "A"}, {"text": "stone", "label": "B"}]}, "answerKey": "A"}) + "\n"
        for i, w in enumerate(["water", "fire", "air"])), encoding="utf-8")
    torch.set_num_threads(threads)
    cfg = MoeLlamaFileConfig.model_validate({"model": model.cfg.model_dump(), "training": {
        "dataset": str(corpus), "seq_len": 32, "val_fraction": 0.25, "seed": 0},
        "paths": {"output_dir": str(root / "run"), "model_path": str(path)}})
    return path, cfg, arc


def test_evaluate_measures_the_heldout_split_and_writes_a_report(model_dir, tmp_path):
    path, cfg, arc = model_dir
    options = EvalOptions(max_eval_windows=8, tasks_per_kind=3, prompts=["All:\n", "café"], max_new_tokens=6,
                          benchmarks=["arc_challenge"], benchmark_path=arc, benchmark_limit=3, batch_size=4)
    report = evaluate_checkpoint(path, cfg, options, output=tmp_path / "out" / "report.md", device="cpu")
    m = report.metrics
    assert math.isclose(m["perplexity"], math.exp(m["val_loss"]), rel_tol=1e-9)
    assert 4.0 < m["val_loss"] < 7.0  # an untrained 300-token model: about log(300) = 5.7
    assert 0.0 <= m["token_accuracy"] <= 1.0 and m["eval_tokens"] > 0
    assert m["letter_counting"] in (0.0, 1 / 3, 2 / 3, 1.0)

    text = report.path.read_text()
    for heading in ("## Architecture", "## Training", "## Results", "### Letter counting", "### Arithmetic",
                    "## Benchmarks", "## Samples"):
        assert heading in text
    params = report.results["parameters"]
    assert f"{params['total']:,} total" in text and f"**{params['active']:,} active per token**" in text
    assert params["active"] < params["total"] and params["experts"] + params["embedding"] < params["total"]
    assert "![Validation perplexity and accuracy](report-perplexity.png)" in text
    assert (tmp_path / "out" / "report-perplexity.png").stat().st_size > 1000
    assert "**Prompt** `café`" in text and len(report.results["samples"]) == 2
    arc_result = report.results["benchmarks"]["arc_challenge"]
    assert arc_result["num_items"] == 3 and 0.0 <= arc_result["metrics"]["acc"] <= 1.0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(m))

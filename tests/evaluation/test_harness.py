"""The lm-evaluation-harness bridge against lm-eval's own ``hf`` model (the oracle).

- Parity: ``mot eval run``'s per-item multiple-choice predictions equal lm-eval's ``hf`` model's on the same
  items and prompt format (tiny expert; fixtures, plus real MMLU/CMMLU items when ../shared is there).
- ``MotLM`` over an expert equals ``hf`` on mot's local task files (lm-eval's MMLU/CMMLU prompt formats),
  on rolling log-likelihood (windows) and on greedy generate_until.
- Other kinds: a zero-gate MoT (fast and full) scores like its primary; a multi-token checkpoint loaded from
  its directory generates exactly ``hf``'s greedy output (verified decoding) and scores with its backbone.
- The task files shipped are the generator's output; the CLI prints lm-eval's table; bad input is one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'mot[harness]')")

from lm_eval.api.instance import Instance  # noqa: E402

from mot.data import load_benchmark  # noqa: E402
from mot.errors import UsageError  # noqa: E402
from mot.evaluation import harness  # noqa: E402
from mot.evaluation.routed import expert_scorer  # noqa: E402
from mot.evaluation.runner import run_evaluation  # noqa: E402
from mot.evaluation.scoring import argmax  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"


@pytest.fixture(scope="module")
def llama(load_tiny):
    return load_tiny("llama")


@pytest.fixture(scope="module")
def hf_lm(llama):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = llama
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)


def _items() -> tuple[list, list]:
    mmlu, cmmlu = load_benchmark("mmlu", FIX / "mmlu"), load_benchmark("cmmlu", FIX / "cmmlu")
    if (SHARED / "mmlu").is_dir() and (SHARED / "cmmlu").is_dir():  # real items across subjects
        for subject in ("anatomy", "high_school_physics", "world_religions"):
            mmlu += load_benchmark("mmlu", SHARED / "mmlu" / "test" / f"{subject}_test.csv")[:6]
        for subject in ("arts", "college_law"):
            cmmlu += load_benchmark("cmmlu", SHARED / "cmmlu" / "test" / f"{subject}.csv")[:6]
    return mmlu, cmmlu


def _mot_run(tmp_path, benchmark, scorer, items) -> dict[str, dict]:
    results = run_evaluation(benchmark, {"m": scorer}, items, tmp_path / benchmark, batch_size=4, progress=False,
                             report=False)
    lines = (tmp_path / benchmark / results["models"]["m"]["partial_file"]).read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_mot_eval_run_predictions_equal_lm_eval_hf(llama, hf_lm, tmp_path):
    scorer = expert_scorer(*llama, "llama", batch_size=4)
    for benchmark, items in zip(("mmlu", "cmmlu"), _items(), strict=True):
        ours = _mot_run(tmp_path, benchmark, scorer, items)
        task = harness.items_task(f"parity_{benchmark}", items)
        results = harness.evaluate(hf_lm, [task], include_defaults=False, log_samples=True)
        theirs = harness.sample_logprobs(results, f"parity_{benchmark}")
        assert len(theirs) == len(items) >= 2
        for doc_id, item in enumerate(items):
            record = ours[item.id]
            assert record["pred"] == argmax(theirs[doc_id]), item.id
            assert record["logprobs"] == pytest.approx(theirs[doc_id], abs=1e-4), item.id


def test_bridge_equals_hf_on_the_local_task_files(llama, hf_lm):
    lm = harness.MotLM(expert_scorer(*llama, "llama"), progress=False)
    tasks = ["mot_mmlu_astronomy", "mot_mmlu_abstract_algebra", "mot_cmmlu_agronomy"]
    data = {"mmlu": FIX / "mmlu", "cmmlu": FIX / "cmmlu"}
    ours = harness.evaluate(lm, tasks, data=data, include_defaults=False, log_samples=True)
    theirs = harness.evaluate(hf_lm, tasks, data=data, include_defaults=False, log_samples=True)
    for task in tasks:
        a, b = harness.sample_logprobs(ours, task), harness.sample_logprobs(theirs, task)
        assert a.keys() == b.keys() and len(a) == 2
        for doc in a:
            assert a[doc] == pytest.approx(b[doc], abs=1e-4)
        assert ours["results"][task]["acc,none"] == theirs["results"][task]["acc,none"]
    # lm-eval's own MMLU/CMMLU prompt formats, from the local files
    first = ours["samples"]["mot_mmlu_astronomy"][0]["arguments"][0]
    assert first[0].startswith("The following are multiple choice questions (with answers) about astronomy.\n\n")
    assert first[0].endswith("\nD. " + load_benchmark("mmlu", FIX / "mmlu" / "test" / "astronomy_test.csv")[0].choices[3] + "\nAnswer:")
    assert first[1] == " A"
    assert ours["samples"]["mot_cmmlu_agronomy"][0]["arguments"][0][0].startswith("以下是关于农学的单项选择题")
    assert ours["samples"]["mot_cmmlu_agronomy"][0]["arguments"][0][0].endswith("\n答案：")


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_rolling_windows_and_greedy_generation_equal_hf(llama):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = llama
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=16)
    scorer = expert_scorer(model, tokenizer, "llama", batch_size=4)
    scorer.max_length = 16  # several windows per text
    ours = harness.MotLM(scorer, progress=False)
    texts = ["import os\nimport sys\n\ndef main(argv):\n    return len(argv) + 1\n", "x = 1", "class Foo:\n    pass\n" * 4]
    assert len(tokenizer(texts[0])["input_ids"]) > 2 * 16
    rolling = _requests("loglikelihood_rolling", [(t,) for t in texts])
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling), abs=1e-3)
    pairs = _requests("loglikelihood", [("", "def f():"), ("x =", " 1"), ("import os\n", "import sys")])
    for (a, ga), (b, gb) in zip(ours.loglikelihood(pairs), theirs.loglikelihood(pairs), strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    gen = _requests("generate_until", [("def main():\n", {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}),
                                       ("import", {"until": ["os"], "max_gen_toks": 8})])
    assert ours.generate_until(gen) == theirs.generate_until(gen)


def test_mot_fast_and_full_with_zero_gates_score_like_the_primary(load_tiny, llama):
    from mot.routing import build_router
    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig
    from mot.thoughts.scoring import MoTModel

    trio = [load_tiny(f) for f in ("gpt2", "llama", "qwen2")]
    scorers = [expert_scorer(m, t, f) for (m, t), f in zip(trio, ("gpt2", "llama", "qwen2"), strict=True)]
    mot = MixtureOfThoughts([m for m, _ in trio], [t for _, t in trio],
                            MoTConfig(num_stacks=2, top_k=3, interaction_heads=4, dropout=0.0),
                            encoder=HashingEncoder(32), seed=0)
    mot.router = build_router("fixed", 32, 3, 3, expert=1)  # the llama expert is the primary
    primary = harness.MotLM(scorers[1], progress=False)
    pairs = _requests("loglikelihood", [("The answer is", " A"), ("The answer is", " B"), ("x =", " 1 + 2")])
    expected = primary.loglikelihood(pairs)
    texts = _requests("loglikelihood_rolling", [("def f(x):\n    return x\n",)])
    for mode in ("fast", "full"):
        lm = harness.MotLM(MoTModel(mot.eval(), scorers, mode=mode), progress=False)
        assert [v for v, _ in lm.loglikelihood(pairs)] == pytest.approx([v for v, _ in expected], abs=1e-4)
        if mode == "fast":  # the routed expert's rolling windows
            assert lm.loglikelihood_rolling(texts) == pytest.approx(primary.loglikelihood_rolling(texts), abs=1e-4)
        else:
            with pytest.raises(UsageError, match="full mode has no rolling"):
                lm.loglikelihood_rolling(texts)


def test_multitoken_checkpoint_from_its_directory(load_tiny, tiny_experts, llama, hf_lm, tmp_path):
    import torch

    from mot.multitoken import MultiTokenConfig, MultiTokenModel, save_multitoken

    backbone, tokenizer = llama
    torch.manual_seed(0)
    model = MultiTokenModel(backbone, tokenizer, MultiTokenConfig(), backbone_spec=str(tiny_experts["llama"].path))
    directory = save_multitoken(model, tmp_path / "mtp", stage="heads")
    assert harness.model_kind(str(directory)) == "multitoken"
    lm = harness.MotLM.from_spec(str(directory), progress=False)
    assert type(lm.generator).__name__ == "MultiTokenGenerator" and lm.generator.verify
    gen = _requests("generate_until", [("def main():\n", {"until": ["\n\n"], "max_gen_toks": 16}),
                                       ("import os\n", {"until": [], "max_gen_toks": 10})])
    assert lm.generate_until(gen) == hf_lm.generate_until(gen)
    pairs = _requests("loglikelihood", [("x =", " 1"), ("def", " f():")])
    assert [v for v, _ in lm.loglikelihood(pairs)] == pytest.approx([v for v, _ in hf_lm.loglikelihood(pairs)], abs=1e-4)


def test_shipped_task_files_are_the_generators_output():
    expected = harness.task_files()
    shipped = {p.name for p in harness.TASKS_DIR.iterdir() if p.suffix == ".yaml"}
    assert shipped == set(expected)
    for name, text in expected.items():
        assert (harness.TASKS_DIR / name).read_text(encoding="utf-8") == text, name
    assert len(harness.MMLU_SUBJECTS) == 57 and len(harness.CMMLU_SUBJECTS) == 67


def test_cli_prints_lm_evals_table(tiny_experts, tmp_path, capsys):
    from mot.cli.main import main

    out = tmp_path / "results.json"
    code = main(["eval", "harness", "--model", str(tiny_experts["llama"].path), "--tasks",
                                      "mot_mmlu_astronomy,mot_gsm8k", "--data", f"mmlu={FIX / 'mmlu'}", "--data",
                                      f"gsm8k={FIX / 'gsm8k'}", "--limit", "2", "--num-fewshot", "0",
                                      "--no-progress", "--output", str(out)])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "|Tasks|Version|Filter|n-shot|Metric|" in output.replace(" ", "")
    assert "astronomy" in output and "mot_gsm8k" in output and "exact_match" in output
    saved = json.loads(out.read_text())
    assert saved["results"]["mot_mmlu_astronomy"]["acc,none"] in (0.0, 0.5, 1.0)


def test_unknown_task_is_a_usage_error(llama):
    lm = harness.MotLM(expert_scorer(*llama, "llama"), progress=False)
    with pytest.raises(UsageError, match="unknown lm-eval task.*no_such_task"):
        harness.evaluate(lm, ["no_such_task"], include_defaults=False)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "mot_mmlu_astronomy"], "--data mmlu=PATH"),
    (["--tasks", "mot_mmlu_anatomy", "--data", f"mmlu={FIX / 'mmlu'}"], "anatomy_test.csv"),
    (["--tasks", "mot_mmlu_astronomy", "--data", "nope=1"], "expected NAME=PATH"),
])
def test_cli_bad_input_is_one_line(tiny_experts, monkeypatch, capsys, args, message):
    from mot.cli.main import main

    monkeypatch.delenv("MOT_MMLU_DIR", raising=False)
    code = main(["eval", "harness", "--model", str(tiny_experts["llama"].path), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_moellama_checkpoint_equals_lm_evals_hf_model(tmp_path):
    """A moellama checkpoint (the HF export `mot llama` writes) through ``MotLM`` scores and generates
    exactly as lm-eval's own ``hf`` model over the same weights."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mot.moellama.hf import MoeLlamaConfig, MoeLlamaForCausalLM
    from mot.moellama.tokenizer import train_tokenizer
    from tests.moellama.conftest import CORPUS, tiny_model

    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    model = tiny_model(seed=5, vocab_size=len(tokenizer), max_seq_len=128)
    hf = MoeLlamaForCausalLM(MoeLlamaConfig.from_model_config(model.cfg))
    hf.model.load_state_dict(model.state_dict())
    path = tmp_path / "llama"
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert harness.model_kind(str(path)) == "moellama"
    lm = harness.MotLM.from_spec(str(path), progress=False)
    with torch.no_grad():
        theirs = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(path).eval(),
                      tokenizer=AutoTokenizer.from_pretrained(path), batch_size=2)
    pairs = _requests("loglikelihood", [("To be, or", " not to be"), ("The king", " is dead")])
    ours_ll, theirs_ll = lm.loglikelihood(pairs), theirs.loglikelihood(pairs)
    assert [v for v, _ in ours_ll] == pytest.approx([v for v, _ in theirs_ll], abs=1e-4)
    assert [g for _, g in ours_ll] == [g for _, g in theirs_ll]
    gen = _requests("generate_until", [("To be", {"until": ["\n"], "max_gen_toks": 12})])
    replies = lm.generate_until(gen)
    assert replies == theirs.generate_until(gen) and replies[0]


def test_mot_checkpoint_directory_fast_and_full(load_tiny, tiny_experts, tmp_path):
    """A saved MoT checkpoint through ``MotLM.from_spec`` (``CKPT``, ``CKPT:full``): closed gates (the
    initialisation), so both modes score exactly like the expert the router picks for each context."""
    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig

    families = ("gpt2", "llama", "qwen2")
    trio = [load_tiny(f) for f in families]
    specs = [str(tiny_experts[f].path) for f in families]
    mot = MixtureOfThoughts([m for m, _ in trio], [t for _, t in trio],
                            MoTConfig(num_stacks=2, top_k=3, interaction_heads=4, dropout=0.0),
                            expert_specs=specs, encoder=HashingEncoder(32), seed=0).eval()
    directory = mot.save_pretrained(tmp_path / "mot-ckpt")
    assert harness.model_kind(str(directory)) == "mot" and harness.model_kind(f"{directory}:full") == "mot"
    contexts = ["The answer is", "x =", "def f(x):\n"]
    pairs = [(c, cont) for c in contexts for cont in (" A", " 1 + 2")]
    picks = dict(zip(contexts, mot.route(contexts).primary.tolist(), strict=True))
    experts = [harness.MotLM(expert_scorer(m, t, f), progress=False) for (m, t), f in zip(trio, families, strict=True)]
    expected = [experts[picks[c]].loglikelihood(_requests("loglikelihood", [(c, x)]))[0][0] for c, x in pairs]
    for spec in (str(directory), f"{directory}:full"):
        lm = harness.MotLM.from_spec(spec, progress=False)
        got = [v for v, _ in lm.loglikelihood(_requests("loglikelihood", pairs))]
        assert got == pytest.approx(expected, abs=1e-4), spec

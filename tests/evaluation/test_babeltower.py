"""BabelTower: translation, scoring, the metrics/predictions files and the upstream flags of
`mot eval babeltower`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mot.evaluation.babeltower as bt
from mot.cli import eval_cmd
from mot.cli.eval_cmd import app
from mot.data import load_babeltower
from mot.errors import DataError, UsageError
from mot.evaluation.babeltower import clean_translation, evaluate_babeltower
from mot.generation import GenerationParams

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "babeltower"
METRIC_KEYS = {"bleu", "codebleu", "parableu_approx", "compilation_accuracy", "compilation_status",
               "syntax_validity", "num_samples", "expert_usage", "generation_mode"}
PREDICTION_KEYS = {"id", "source", "reference", "prediction", "primary_expert", "syntax_valid", "compiles"}


class StubTranslator:
    """Answers each prompt with a fixed reply chosen by the C++ source it contains."""

    name = "stub"

    def __init__(self, replies: dict[str, str]):
        self.replies = replies
        self.prompts: list[str] = []

    def generate(self, prompts, params):
        self.prompts += prompts
        return [next(r for src, r in self.replies.items() if src in p) for p in prompts]

    def stream(self, prompt, params):
        yield from self.generate([prompt], params)


def test_references_as_predictions_score_bleu_100():
    pairs = load_babeltower(DATA)
    # the model keeps talking after the code: the reply is cut at the template's "###"
    stub = StubTranslator({p.source: f"{p.target}\n### Translate C++ to CUDA:\nmore" for p in pairs})
    metrics, preds = evaluate_babeltower(stub, pairs, split="test", params=GenerationParams(max_new_tokens=8),
                                         check_compilation=False, progress=False)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["exact_match"] == 100.0 and metrics["syntax_validity"] == 100.0
    assert metrics["codebleu"] == pytest.approx(100.0)
    assert metrics["num_samples"] == 2 and metrics["expert_usage"] == {"stub": 2}
    assert metrics["generation_mode"] == "single_model"
    assert metrics["compilation_accuracy"] is None and metrics["compilation_status"] == "not checked"
    assert [p["prediction"] for p in preds] == [p.target for p in pairs]
    assert all(p["syntax_valid"] and p["primary_expert"] == "stub" for p in preds)
    assert stub.prompts[0] == f"### Translate C++ to CUDA:\n{pairs[0].source}\n### CUDA:\n"


def test_broken_translation_halves_syntax_validity():
    pairs = load_babeltower(DATA)
    stub = StubTranslator({pairs[0].source: pairs[0].target, pairs[1].source: "__global__ void fill(int *x {"})
    metrics, preds = evaluate_babeltower(stub, pairs, split="test", params=GenerationParams(),
                                         check_compilation=False, progress=False)
    assert metrics["syntax_validity"] == 50.0 and metrics["exact_match"] == 50.0
    assert [p["syntax_valid"] for p in preds] == [True, False]
    assert metrics["bleu"] < 100.0


def test_clean_translation_unwraps_fences_and_cuts_at_markers():
    assert clean_translation("```cuda\n__global__ void k() {}\n```\nexplanation") == "__global__ void k() {}"
    assert clean_translation("  int x;\n### C++:\n", ["###"]) == "int x;"


def test_tiny_model_writes_metrics_and_predictions(tiny_experts, tmp_path):
    result = CliRunner().invoke(app, [
        "babeltower", "--dataset_dir", str(DATA), "--checkpoint_path", str(tiny_experts["gpt2"].path),
        "--split", "test", "--max_new_tokens", "6", "--temperature", "0", "--no_check_compilation",
        "--save_predictions", "--seed", "1", "--output_dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "babeltower_test_metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["num_samples"] == 2 and metrics["generation_mode"] == "single_model"
    assert metrics["expert_usage"] == {str(tiny_experts["gpt2"].path): 2}
    assert 0.0 <= metrics["bleu"] <= 100.0 and metrics["compilation_accuracy"] is None
    preds = json.loads((tmp_path / "babeltower_test_predictions.json").read_text())
    assert len(preds) == 2 and all(set(p) == PREDICTION_KEYS for p in preds)
    assert [p["id"] for p in preds] == ["test/0", "test/1"]


def test_mot_checkpoint_reports_router_expert_usage(tiny_experts, load_tiny, tmp_path):
    import torch

    from mot.thoughts import MixtureOfThoughts, MoTConfig

    families = ["gpt2", "llama"]
    specs = [str(tiny_experts[f].path) for f in families]
    pairs = [load_tiny(f) for f in families]
    torch.manual_seed(0)
    config = MoTConfig(num_stacks=2, top_k=2, interaction_heads=4, router_hidden_dim=16, dropout=0.0,
                       encoder="hashing-32")
    mot = MixtureOfThoughts([m for m, _ in pairs], [t for _, t in pairs], config, expert_specs=specs)
    ckpt = mot.save_pretrained(tmp_path / "ckpt")
    for flag, mode in (("--no_mot_generate", "fast"), ("--use-mot-generate", "full")):
        out = tmp_path / mode
        result = CliRunner().invoke(app, [
            "babeltower", "--dataset-dir", str(DATA), "--checkpoint-path", str(ckpt), "--num_samples", "1",
            "--max_new_tokens", "3", "--temperature", "0", flag, "--no-check-compilation", "--no_save_predictions",
            "--output_dir", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "babeltower_test_metrics.json").read_text())
        assert metrics["generation_mode"] == mode and metrics["num_samples"] == 1
        assert set(metrics["expert_usage"]) == set(specs) and sum(metrics["expert_usage"].values()) == 1
        assert not (out / "babeltower_test_predictions.json").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--use_mot_generate", "--check_compilation", "--save_predictions"], ("full", True, True)),
    (["--no_mot_generate", "--no_check_compilation", "--no_save_predictions"], ("fast", False, False)),
    (["--use-mot-generate", "--no-check-compilation", "--save-predictions"], ("full", False, True)),
    (["--no-mot-generate", "--check-compilation", "--no-save-predictions"], ("fast", True, False)),
    ([], ("fast", True, True)),  # upstream defaults
])
def test_boolean_flags_switch_both_ways(flags, expected, monkeypatch, tmp_path):
    seen = {}

    def fake_load(spec, **kwargs):
        seen["mot_mode"] = kwargs["mot_mode"]
        return StubTranslator({})

    def fake_evaluate(generator, pairs, **kwargs):
        seen["check_compilation"] = kwargs["check_compilation"]
        return {"num_samples": 2, "bleu": 1.0, "codebleu": 1.0, "parableu_approx": 1.0, "syntax_validity": 1.0,
                "compilation_accuracy": None, "compilation_status": "not checked",
                "generation_mode": "single_model"}, []

    monkeypatch.setattr(eval_cmd, "load_eval_model", fake_load)
    monkeypatch.setattr(bt, "evaluate_babeltower", fake_evaluate)
    result = CliRunner().invoke(app, ["babeltower", "--dataset_dir", str(DATA), "--checkpoint_path", "stub",
                                      "--output_dir", str(tmp_path), *flags])
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "babeltower_test_predictions.json").exists()
    assert (seen["mot_mode"], seen["check_compilation"], saved) == expected


# ------------------------------------------------------------------ issue 18: BabelTower on the real files

REAL = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "babeltower" / "dataset"
needs_real = pytest.mark.skipif(not (REAL / "cuda.para.test.tok").is_file(),
                                reason=f"the real BabelTower files are not at {REAL}")


def test_endcom_after_a_pragma_becomes_a_line_break():
    from mot.data.parallel import detokenize_cpp
    from mot.evaluation.code_metrics import cuda_syntax_valid

    # the shape of reference test/143: ``#pragma unroll ENDCOM for ...``
    code = detokenize_cpp("__global__ void k ( int * a , int n ) { int i = 0 ; #pragma unroll ENDCOM "
                          "for ( i = 0 ; i < n ; i ++ ) { a [ i ] = i ; } }")
    assert "ENDCOM" not in code
    assert "\n  #pragma unroll\n  for (i = 0; i < n; i++) {\n" in code
    assert cuda_syntax_valid(code)


@needs_real
def test_real_reference_143_with_a_pragma_parses():
    from mot.evaluation.code_metrics import cuda_syntax_valid

    pair = load_babeltower(REAL)[143]
    assert "#pragma unroll\n" in pair.target and "ENDCOM" not in pair.target
    assert cuda_syntax_valid(pair.target)


def test_reply_ending_with_a_lone_closing_fence_keeps_its_code():
    code = "__global__ void k(int *a) {\n  a[threadIdx.x] = 0;\n}"
    assert clean_translation(f"{code}\n```") == code
    assert clean_translation(f"{code}\n```\n### Translate C++ to CUDA:\n", ["###"]) == code
    # an opening fence still unwraps, closed or not
    assert clean_translation(f"Here it is:\n```cuda\n{code}\n```\nDone.") == code
    assert clean_translation(f"```cuda\n{code}") == code


def test_empty_code_does_not_compile():
    from mot.evaluation.compile import compiles_cuda

    assert compiles_cuda("") is False
    assert compiles_cuda(" \n\t") is False


def test_a_wrong_answer_gets_no_data_flow_credit():
    from mot.evaluation.code_metrics import codebleu, codebleu_components
    from mot.evaluation.parableu import parableu_components

    ref = "__global__ void add(float *a, float *b, int n) {\n  int i = threadIdx.x;\n  if (i < n) a[i] += b[i];\n}"
    wrong = "int main() {\n  return 0;\n}"
    parts = codebleu_components(wrong, ref)
    assert parts["dataflow_match"] == 0.0
    assert parableu_components(wrong, ref)["dataflow_match"] == 0.0
    expected = 25.0 * (parts["ngram_match"] + parts["weighted_ngram_match"] + parts["syntax_match"])
    assert codebleu(wrong, ref) == pytest.approx(expected, abs=1e-9)
    assert codebleu(wrong, ref) < 15.0  # was > 25 with the data-flow term counted as a full match
    # CodeBLEU's rule: a reference without any data flow still counts as a full match
    no_flow = "void f() {\n}"
    assert codebleu_components(no_flow, no_flow)["dataflow_match"] == 1.0


@needs_real
def test_references_score_100_on_every_metric_through_predictions_file(tmp_path):
    pairs = load_babeltower(REAL)
    preds = tmp_path / "refs.json"
    preds.write_text(json.dumps([p.target for p in pairs]))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["babeltower", "--dataset_dir", str(REAL), "--predictions", str(preds),
                                      "--no-check-compilation", "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "babeltower_test_metrics.json").read_text())
    assert metrics["num_samples"] == len(pairs) == 180
    for name in ("bleu", "chrf", "rouge_l", "codebleu", "parableu_approx", "exact_match", "edit_similarity",
                 "syntax_validity"):
        assert metrics[name] == pytest.approx(100.0), name
    assert all(v == pytest.approx(1.0) for v in metrics["codebleu_components"].values())
    assert all(v == pytest.approx(1.0) for v in metrics["parableu_components"].values())
    assert metrics["generation_mode"] == "predictions"
    records = json.loads((out / "babeltower_test_predictions.json").read_text())
    assert all(r["syntax_valid"] for r in records)
    # the records file this command writes is itself a predictions file (matched by id)
    again = CliRunner().invoke(app, ["babeltower", "--dataset_dir", str(REAL), "--predictions",
                                     str(out / "babeltower_test_predictions.json"), "--num_samples", "3",
                                     "--no-check-compilation", "--no-save-predictions", "--output_dir", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "babeltower_test_metrics.json").read_text())["exact_match"] == 100.0


def test_predictions_and_checkpoint_are_exclusive_and_a_short_file_is_one_line(tmp_path):
    both = CliRunner().invoke(app, ["babeltower", "--dataset_dir", str(DATA), "--predictions", "x.json",
                                    "--checkpoint_path", "stub"])
    assert isinstance(both.exception, UsageError) and "exactly one of" in str(both.exception)
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["int x;"]))
    result = CliRunner().invoke(app, ["babeltower", "--dataset_dir", str(DATA), "--predictions", str(short),
                                      "--no-check-compilation", "--output_dir", str(tmp_path)])
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == f"{short}: 1 predictions for 2 pairs; give one per pair, in order"

"""``mot demo`` end to end on tiny offline experts: the same code path as the real demo, a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from mot.demo import DemoSettings, run_demo
from mot.demo.settings import DOMAINS

FAMILIES = ("llama", "qwen2", "gemma3_text")


def _settings(tiny_experts, out, **extra) -> DemoSettings:
    values = {"experts": [str(tiny_experts[f].path) for f in FAMILIES], "output_dir": str(out),
              "budget_minutes": 0.01, "train_per_domain": 4, "test_per_domain": 2, "encoder": "hashing-64",
              "shared_dim": 16, "interaction_heads": 2, "router_hidden_dim": 16, "min_steps": 6,
              "learning_rate": 5e-3, "generation_tokens": 3, "install": False}
    values.update(extra)
    return DemoSettings(**values)


@pytest.fixture(scope="module")
def finished_demo(tiny_experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = _settings(tiny_experts, out)
    return settings, run_demo(settings)


def test_demo_report_has_every_section_row_and_file(finished_demo):
    settings, results = finished_demo
    out = settings.output_dir
    labels = [m["label"] for m in results["methods"]]
    assert labels == [f"{e} alone" for e in settings.experts] + ["learned routing alone", "oracle routing", "MoT"]
    for m in results["methods"]:
        assert set(m["per_domain"]) == set(DOMAINS)
        assert m["overall"]["nats_per_byte"] > 0
    # the oracle picks the best expert per sample: never worse than any expert alone or the router
    oracle = next(m for m in results["methods"] if m["kind"] == "oracle")["overall"]["nats_per_byte"]
    assert all(oracle <= m["overall"]["nats_per_byte"] + 1e-9 for m in results["methods"] if m["kind"] != "mot")
    routing = results["routing"]
    assert 0.0 <= routing["accuracy"] <= 1.0
    assert sum(map(sum, routing["confusion"])) == results["sizes"]["test"] == 2 * len(DOMAINS)
    assert {g["mode"] for g in results["generations"]} == {"fast", "full"}
    assert all(g["tokens_per_s"] >= 0 for g in results["generations"])
    assert results["training"]["steps"] == settings.min_steps  # the budget was spent: min_steps only
    out_path = Path(out)
    report = (out_path / "report.md").read_text()
    for section in ("## Set-up", "## Held-out test results", "## Routing", "## Training", "## Generations",
                    "## Timing"):
        assert section in report
    for label in labels:
        assert f"| {label} |" in report
    for name in ("results.json", "task.jsonl", "data/train.jsonl", "data/test.jsonl", "confusion_matrix.png",
                 "domain_losses.png", "loss_curve.png", "train/done.json"):
        assert (out_path / name).is_file(), name
    assert json.loads((out_path / "results.json").read_text())["complete"] is True


def test_trained_mot_beats_untrained_on_its_training_data(finished_demo):
    from mot.data.mixed_domain import MixedDomainTask
    from mot.demo.pipeline import _build_model
    from mot.demo.scoring import mot_nll
    from mot.thoughts.training import MoTTrainTask
    from mot.training import checkpoint as ckpt

    settings, results = finished_demo
    out = Path(settings.output_dir)
    task = MixedDomainTask.load(out / "task.jsonl")
    console = Console(quiet=True)
    untrained = _build_model(settings, console)
    before, _, _ = mot_nll(MoTTrainTask(untrained), task.train)
    trained = _build_model(settings, console)
    trained.load_trainable_state_dict(ckpt.load_checkpoint(Path(results["training"]["checkpoint"])).weights)
    after, _, _ = mot_nll(MoTTrainTask(trained), task.train)
    assert sum(after) < sum(before)
    assert any(float(g.detach().abs().sum()) > 0 for layer in trained.interactions for g in layer.gates)


def test_rerun_reuses_finished_work(finished_demo, tiny_experts):
    settings, results = finished_demo
    out = Path(settings.output_dir)
    metrics_before = (out / "train" / "metrics.jsonl").read_text()
    again = run_demo(settings)
    assert again["methods"] == results["methods"]
    # results.json gone: evaluation runs again, but training and the peer cache are reused
    (out / "results.json").unlink()
    cache_files = {p: p.stat().st_mtime_ns for p in (out / "peer_cache").rglob("*.bin")}
    third = run_demo(settings)
    assert (out / "train" / "metrics.jsonl").read_text() == metrics_before
    assert {p: p.stat().st_mtime_ns for p in (out / "peer_cache").rglob("*.bin")} == cache_files
    assert third["training"]["steps"] == results["training"]["steps"]
    mot = lambda r: next(m for m in r["methods"] if m["kind"] == "mot")["overall"]["nats_per_byte"]  # noqa: E731
    assert mot(third) == pytest.approx(mot(results), rel=1e-5)


def test_interrupted_training_resumes_from_its_last_checkpoint(tiny_experts, tmp_path, monkeypatch):
    from mot.demo import pipeline

    settings = _settings(tiny_experts, tmp_path / "demo")
    original = pipeline._Budget.__call__

    def interrupt_at_step_4(self, trainer, record):
        original(self, trainer, record)
        if trainer.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Budget, "__call__", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_demo(settings)
    monkeypatch.setattr(pipeline._Budget, "__call__", original)
    results = run_demo(settings)
    steps = [json.loads(line)["step"] for line in (tmp_path / "demo" / "train" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert results["training"]["steps"] == settings.min_steps
    assert steps == list(range(1, settings.min_steps + 1))  # steps 5.. continued from the step-4 checkpoint
    # a larger budget later trains on from the finished run's last checkpoint
    longer = run_demo(settings.model_copy(update={"budget_minutes": 0.02}))
    assert longer["training"]["steps"] > settings.min_steps


def test_output_dir_with_other_settings_is_refused(finished_demo, tiny_experts):
    from mot.errors import UsageError

    settings, _ = finished_demo
    with pytest.raises(UsageError, match="other settings"):
        run_demo(settings.model_copy(update={"seed": 1}))


def test_configs_demo_json_is_the_demo_run_config():
    from mot.config import load_config
    from mot.thoughts.run_config import MoTRunConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "demo.json"
    assert json.loads(path.read_text()) == DemoSettings().run_config()
    load_config(path, MoTRunConfig)  # valid for `mot thoughts train -c configs/demo.json`


def test_cli_bad_budget_is_a_one_line_usage_error():
    from mot.cli.demo_cmd import demo
    from mot.errors import UsageError

    app = typer.Typer()
    app.command()(demo)
    help_text = CliRunner().invoke(app, ["--help"]).output
    for flag in ("--budget-minutes", "--experts", "--output-dir", "--seed", "--quick"):
        assert flag in help_text
    result = CliRunner().invoke(app, ["--budget-minutes", "-1"])
    assert isinstance(result.exception, UsageError)
    assert "budget_minutes" in str(result.exception) and "\n" not in str(result.exception)


def test_capacity_control_row_sits_beside_mot_with_the_same_steps(finished_demo):
    settings, results = finished_demo
    control = results["control"]
    assert control["kind"] == "control" and control["label"] == "capacity control"
    assert set(control["per_domain"]) == set(DOMAINS) and control["overall"]["nats_per_byte"] > 0
    # trained exactly as long as MoT, never capped by the budget
    assert results["control_training"]["steps"] == results["training"]["steps"]
    assert results["verdict"][0].startswith("MoT ") and "capacity control" in results["verdict"][0]
    # the tiny budget capped MoT's fixed steps, and the report says so
    assert results["training"]["capped"] is True
    assert results["training"]["fixed_steps"] == settings.max_steps > results["training"]["steps"]
    report = (Path(settings.output_dir) / "report.md").read_text()
    assert "| capacity control |" in report and "time budget (a cap" in report
    rows = report.split("| MoT |")[1]
    assert "| capacity control |" in rows  # the control's row follows MoT's
    assert all(s["control_primary"] in range(len(settings.experts)) for s in results["test_samples"])


def test_fixed_steps_run_in_full_when_the_budget_allows(tiny_experts, tmp_path):
    settings = _settings(tiny_experts, tmp_path / "demo", budget_minutes=30.0, max_epochs=1.0, min_steps=2)
    results = run_demo(settings)
    assert results["training"]["steps"] == settings.max_steps == results["control_training"]["steps"]
    assert results["training"]["capped"] is False and "fixed step count" in results["training"]["stopped"]

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pydantic import ValidationError

from mot.errors import CheckpointError, MotError
from mot.training import Trainer, TrainingConfig
from mot.training import checkpoint as ckpt
from mot.training.tracking import read_metrics
from tests.training.toy import ToyDataset, ToyTask


def params_of(task: ToyTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.module.state_dict().items()}


def train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def test_training_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(ValidationError, match="precision"):
        TrainingConfig(precision="fp8")
    with pytest.raises(ValidationError, match="gradient_accumulation_steps"):
        TrainingConfig(gradient_accumulation_steps=0)
    with pytest.raises(ValidationError, match="max_grad_norm"):
        TrainingConfig(max_grad_norm=0.0)
    with pytest.raises(ValidationError, match="extra"):
        TrainingConfig(learnig_rate=0.1)
    assert TrainingConfig(max_grad_norm=None).max_grad_norm is None


def test_two_accumulated_micro_batches_equal_one_double_batch(tmp_path, quiet_config):
    results = []
    for batch_size, accum in ((4, 2), (8, 1)):
        task = ToyTask()
        config = quiet_config(max_steps=4, batch_size=batch_size, gradient_accumulation_steps=accum,
                              max_grad_norm=1.0, weight_decay=0.01)
        Trainer(task, config, ToyDataset(64), run_dir=tmp_path / f"b{batch_size}").fit()
        results.append(params_of(task))
    accumulated, single = results
    assert accumulated.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(accumulated[name], single[name], atol=1e-6, rtol=0)
    assert train_losses(tmp_path / "b4") == pytest.approx(train_losses(tmp_path / "b8"), abs=1e-6)


def test_nonfinite_loss_or_grad_skips_the_step_and_counts_it(tmp_path, quiet_config):
    task = ToyTask(nan_loss_calls=(3,), nan_grad_calls=(5,))
    snapshots = []
    trainer = Trainer(task, quiet_config(max_steps=6), ToyDataset(64), run_dir=tmp_path,
                      callbacks=[lambda trainer, record: snapshots.append(params_of(task))])
    result = trainer.fit()
    assert result.nonfinite_steps == 2
    records = {r["step"]: r for r in read_metrics(tmp_path) if "nonfinite_total" in r}
    assert records[3]["skipped"] == "nonfinite_loss" and records[3]["loss"] is None
    assert records[5]["skipped"] == "nonfinite_grad" and records[5]["loss"] is not None
    assert records[6]["nonfinite_total"] == 2 and "skipped" not in records[6]
    for skipped in (3, 5):  # params after a skipped step == params before it, exactly
        for name, before in snapshots[skipped - 2].items():
            assert torch.equal(snapshots[skipped - 1][name], before)
    assert not torch.equal(snapshots[1]["head.weight"], snapshots[0]["head.weight"])
    assert all(torch.isfinite(v).all() for v in params_of(task).values())
    assert "step 3 skipped: non-finite loss" in (tmp_path / "train.log").read_text()


def test_too_many_nonfinite_steps_in_a_row_abort_with_one_line(tmp_path, quiet_config):
    task = ToyTask(nan_loss_calls=(2, 3, 4))
    with pytest.raises(MotError) as info:
        Trainer(task, quiet_config(max_steps=8, max_consecutive_nonfinite=3), ToyDataset(64),
                run_dir=tmp_path).fit()
    message = str(info.value)
    assert "\n" not in message
    assert "stopped at step 4" in message and "3 steps in a row" in message
    assert [r.get("skipped") for r in read_metrics(tmp_path)] == [None, "nonfinite_loss", "nonfinite_loss",
                                                                 "nonfinite_loss"]


class ScoredToyTask(ToyTask):
    """Adds ``evaluate`` with a higher-is-better metric (``score = -mse``)."""

    def evaluate(self, batches):
        losses = [self.loss(batch)[0].item() for batch in batches]
        return {"score": -sum(losses) / len(losses)}


@pytest.mark.parametrize(("metric", "mode"), [("val_loss", "min"), ("score", "max")])
def test_best_checkpoint_follows_the_metric_and_keep_last_is_honoured(tmp_path, quiet_config, metric, mode):
    # a large lr makes validation loss go up and down, so "best" is not simply the last step
    config = quiet_config(max_steps=12, eval_every=2, save_every=2, keep_last=2, learning_rate=0.3,
                          best_metric=metric, best_mode=mode)
    Trainer(ScoredToyTask(), config, ToyDataset(64), val_data=ToyDataset(24, seed=7), run_dir=tmp_path).fit()
    evals = [r for r in read_metrics(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8, 10, 12]
    pick = min if mode == "min" else max
    best = pick(evals, key=lambda r: r[metric])
    meta = ckpt.read_meta(tmp_path / "best")
    assert meta is not None and meta["step"] == best["step"]
    assert meta["metrics"][metric] == pytest.approx(best[metric])
    assert [p.name for _, p in ckpt.step_checkpoints(tmp_path)] == ["step-000010", "step-000012"]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    # best/ is a full checkpoint: it resumes like any other
    weights = ckpt.load_checkpoint(tmp_path / "best").weights
    assert set(weights) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}


def test_crash_inside_a_checkpoint_write_leaves_the_previous_one_for_resume(tmp_path, quiet_config,
                                                                            monkeypatch):
    config = quiet_config(max_steps=9, save_every=3, keep_last=5)
    reference = tmp_path / "reference"
    Trainer(ToyTask(dropout=0.2), config, ToyDataset(64), run_dir=reference).fit()

    run = tmp_path / "run"
    real_write_state = ckpt._write_trainer_state
    calls = []

    def crash_on_second_save(path, state):
        calls.append(path)
        if len(calls) == 2:  # weights and config of step 6 are already on disk
            raise RuntimeError("simulated crash during checkpoint write")
        real_write_state(path, state)

    monkeypatch.setattr(ckpt, "_write_trainer_state", crash_on_second_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(ToyTask(dropout=0.2), config, ToyDataset(64), run_dir=run).fit()
    monkeypatch.setattr(ckpt, "_write_trainer_state", real_write_state)

    assert not (run / "step-000006").exists()
    # what a hard kill mid-write would leave: a temp dir and (by hand) a partial step dir
    partial = run / ".tmp-step-000006-12345"
    partial.mkdir()
    (partial / ckpt.WEIGHTS_FILE).write_bytes(b"torn")
    (run / "step-000007").mkdir()
    (run / "step-000007" / ckpt.WEIGHTS_FILE).write_bytes(b"torn")
    assert ckpt.latest_checkpoint(run) == run / "step-000003"
    ckpt.load_checkpoint(run / "step-000003")

    result = Trainer(ToyTask(dropout=0.2), config.model_copy(update={"resume": "auto"}), ToyDataset(64),
                     run_dir=run).fit()
    assert result.step == 9
    assert not partial.exists()
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 10))
    assert train_losses(run) == train_losses(reference)


def test_bad_resume_path_is_one_clear_line(tmp_path, quiet_config):
    trainer = Trainer(ToyTask(), quiet_config(max_steps=2), ToyDataset(64), run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist") as info:
        trainer.fit(resume=tmp_path / "missing")
    assert "\n" not in str(info.value)
    not_a_checkpoint = tmp_path / "junk"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "trainable.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not a complete checkpoint \(missing checkpoint.json"):
        trainer.fit(resume=not_a_checkpoint)


def test_checkpoint_of_another_model_is_refused_naming_the_mismatch(tmp_path, quiet_config, monkeypatch):
    Trainer(ToyTask(hidden=8), quiet_config(max_steps=2), ToyDataset(64), run_dir=tmp_path / "a").fit()
    saved = tmp_path / "a" / "step-000002"
    with pytest.raises(CheckpointError, match="fingerprint 'arch' is 'toy-mlp-8' there but 'toy-mlp-16'") as info:
        Trainer(ToyTask(hidden=16), quiet_config(max_steps=4), ToyDataset(64), run_dir=tmp_path / "b").fit(
            resume=saved)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(ToyTask, "fingerprint", lambda self: {})  # shapes are checked even without one
    with pytest.raises(CheckpointError, match=r"'body.0.weight' has shape \[8, 4\] in the checkpoint but \[16, 4\]"):
        Trainer(ToyTask(hidden=16), quiet_config(max_steps=4), ToyDataset(64), run_dir=tmp_path / "c").fit(
            resume=saved)


def test_resume_auto_in_an_empty_run_dir_starts_fresh(tmp_path, quiet_config):
    result = Trainer(ToyTask(), quiet_config(max_steps=2, resume="auto"), ToyDataset(64), run_dir=tmp_path).fit()
    assert result.step == 2 and (tmp_path / "step-000002").is_dir()


def test_tracking_writes_log_metrics_tensorboard_and_plots(tmp_path, quiet_config):
    config = quiet_config(max_steps=6, log_every=2, tensorboard=True, plots=True, eval_every=3)
    Trainer(ToyTask(), config, ToyDataset(64), val_data=ToyDataset(16, seed=3), run_dir=tmp_path).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert all("samples_per_s" in r for r in records if "loss" in r)
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "routing.png").stat().st_size > 1000
    log = (tmp_path / "train.log").read_text()
    assert "training 6 steps" in log and "saved checkpoint" in log
    assert json.loads((tmp_path / "step-000006" / "config.json").read_text()) == {"hidden": 8}


def test_wandb_requested_without_the_package_is_a_clear_error(tmp_path, quiet_config):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    with pytest.raises(MotError, match="pip install wandb, or set training.wandb_mode=disabled"):
        Trainer(ToyTask(), quiet_config(max_steps=1, wandb_mode="offline"), ToyDataset(64),
                run_dir=tmp_path).fit()


def test_bf16_autocast_on_cpu_trains(tmp_path, quiet_config):
    result = Trainer(ToyTask(), quiet_config(max_steps=3, precision="bf16"), ToyDataset(64),
                     run_dir=tmp_path).fit()
    assert result.nonfinite_steps == 0 and result.last_loss is not None


def test_dataset_smaller_than_a_batch_is_a_data_error(tmp_path, quiet_config):
    from mot.errors import DataError

    with pytest.raises(DataError, match="fewer than one global batch of 8"):
        Trainer(ToyTask(), quiet_config(max_steps=1), ToyDataset(5), run_dir=tmp_path)


def test_gradient_checkpointing_without_a_hook_is_a_config_error(tmp_path, quiet_config):
    from mot.errors import ConfigError

    with pytest.raises(ConfigError, match="enable_gradient_checkpointing"):
        Trainer(ToyTask(), quiet_config(max_steps=1, gradient_checkpointing=True), ToyDataset(64),
                run_dir=tmp_path)


# ------------------------------------------------------------------------- issue 18: checkpoint integrity


def _flip_bit(path, offset_from_end: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_bit_flip_is_caught_and_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, quiet_config,
                                                                                   caplog):
    config = quiet_config(max_steps=9, save_every=3, keep_last=5)
    reference = tmp_path / "reference"
    Trainer(ToyTask(), config, ToyDataset(64), run_dir=reference).fit()

    run = tmp_path / "run"
    Trainer(ToyTask(), config, ToyDataset(64), run_dir=run).fit()
    shutil.rmtree(run / "step-000009")  # as if killed after step 6
    meta = ckpt.read_meta(run / "step-000006")
    assert set(meta["checksums"]) == {"trainable.safetensors", "trainer_state.pt", "training_config.json",
                                      "config.json"}
    assert meta["checksums"]["trainable.safetensors"] == ckpt.file_sha256(run / "step-000006" / ckpt.WEIGHTS_FILE)
    _flip_bit(run / "step-000006" / ckpt.WEIGHTS_FILE)  # inside the tensor data, the header still parses
    assert ckpt.checkpoint_problem(run / "step-000006") == "trainable.safetensors does not match its checksum " \
                                                           "(corrupted)"
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        ckpt.load_checkpoint(run / "step-000006")
    with pytest.raises(CheckpointError, match=r"step-000006' is not a complete checkpoint \(trainable"):
        Trainer(ToyTask(), config, ToyDataset(64), run_dir=tmp_path / "other").fit(resume=run / "step-000006")

    with caplog.at_level("WARNING", logger="mot.training.checkpoint"):
        result = Trainer(ToyTask(), config.model_copy(update={"resume": "auto"}), ToyDataset(64),
                         run_dir=run).fit()
    warning = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(warning) == 1 and "step-000006" in warning[0] and warning[0].endswith(str(run / "step-000003"))
    assert result.step == 9
    # resumed at step 3: steps 4.. ran twice in metrics.jsonl, the second run equals the uninterrupted one
    assert train_losses(run)[-6:] == train_losses(reference)[3:]


def test_resume_auto_when_no_checkpoint_is_good_is_one_clear_error(tmp_path, quiet_config):
    config = quiet_config(max_steps=6, save_every=3, keep_last=5)
    run = tmp_path / "run"
    Trainer(ToyTask(), config, ToyDataset(64), run_dir=run).fit()
    _flip_bit(run / "step-000003" / ckpt.STATE_FILE)
    (run / "step-000006" / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError) as err:
        Trainer(ToyTask(), config.model_copy(update={"resume": "auto"}), ToyDataset(64), run_dir=run).fit()
    assert str(err.value) == (
        f"resume=auto: none of the 2 checkpoint(s) in {run} is valid (newest: step-000006: missing "
        f"trainable.safetensors); restore the files, or start over from step 0 by running without resume "
        f"(or after removing {run}/step-*)")
    # every checkpoint's weights missing: the same error, not a silent restart from step 0
    (run / "step-000003" / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="none of the 2 checkpoint"):
        Trainer(ToyTask(), config.model_copy(update={"resume": "auto"}), ToyDataset(64), run_dir=run).fit()
    assert not (run / "step-000006" / ckpt.WEIGHTS_FILE).exists()
    # asking to start over (no resume) does
    result = Trainer(ToyTask(), config, ToyDataset(64), run_dir=run).fit()
    assert result.step == 6 and ckpt.checkpoint_problem(run / "step-000006") is None


def test_trainer_state_of_the_wrong_structure_is_one_line_naming_the_file(tmp_path, quiet_config):
    config = quiet_config(max_steps=2)
    run = tmp_path / "run"
    Trainer(ToyTask(), config, ToyDataset(64), run_dir=run).fit()
    step = run / "step-000002"
    torch.save({"model": {}, "step": 2}, step / ckpt.STATE_FILE)
    meta = json.loads((step / ckpt.META_FILE).read_text())
    meta["checksums"] = ckpt.checksums(step)  # a consistent checkpoint, just not mot's structure
    (step / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        Trainer(ToyTask(), config.model_copy(update={"max_steps": 4}), ToyDataset(64),
                run_dir=tmp_path / "b").fit(resume=step)
    assert str(err.value) == (f"{step / ckpt.STATE_FILE}: trainer state has no 'optimizer' entry; it was not "
                              "written by mot's Trainer (or is damaged)")
    torch.save([1, 2, 3], step / ckpt.STATE_FILE)
    meta["checksums"] = ckpt.checksums(step)
    (step / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"trainer_state.pt: expected a dict of trainer state, found a list"):
        ckpt.load_checkpoint(step)

"""One set of generation flags, one spelling, one style: every command spells them the same way, the old
spellings still work (hidden), and ``--help`` shows only the new one."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from mot.cli import options
from mot.cli.main import app
from mot.cli.options import canonical_args, generation_params
from mot.errors import UsageError
from mot.generation import GenerationParams


class Captured(Exception):
    """Stops a command once its generation settings are known."""


@pytest.fixture
def capture(monkeypatch, tmp_path):
    """Run ``mot ARGS`` up to its ``generation_params`` call and return the ``GenerationParams`` it built."""
    monkeypatch.chdir(tmp_path)  # no configs/moellama.hocon: llama commands take the built-in defaults

    def fake(*args, **kwargs):
        raise Captured(generation_params(*args, **kwargs))

    monkeypatch.setattr(options, "generation_params", fake)

    def run(args: list[str]) -> GenerationParams:
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, Captured), (result.exit_code, result.output, result.exception)
        return result.exception.args[0]

    return run


SAMPLING_OLD = ["--temperature", "0.5", "--top_k", "3", "--top_p", "0.9", "--seed", "7"]
SAMPLING_NEW = ["--temperature", "0.5", "--top-k", "3", "--top-p", "0.9", "--seed", "7"]

# command, its other arguments, [old spellings ...], the one spelling, the params they must all give
CASES = [
    (["chat", "--model", "x"], [["--max-tokens", "9", *SAMPLING_OLD], ["--max_tokens", "9", *SAMPLING_OLD]],
     ["--max-new-tokens", "9", *SAMPLING_NEW],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.9, seed=7)),
    (["llama", "generate", "--prompt", "hi"], [["--max-tokens", "9", *SAMPLING_OLD, "--stop", "##"]],
     ["--max-new-tokens", "9", *SAMPLING_NEW, "--stop", "##"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.9, seed=7, stop=["##"])),
    (["llama", "chat"], [["--max-tokens", "9", *SAMPLING_OLD], ["--max_tokens", "9", *SAMPLING_OLD]],
     ["--max-new-tokens", "9", *SAMPLING_NEW],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.9, seed=7)),
    (["multitoken", "infer", "--ckpt", "x", "--prompt", "p"],
     [["--max_tokens", "9", *SAMPLING_OLD, "--stop", "##"], ["--max-tokens", "9", *SAMPLING_OLD, "--stop", "##"]],
     ["--max-new-tokens", "9", *SAMPLING_NEW, "--stop", "##"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.9, seed=7, stop=["##"])),
    (["thoughts", "generate", "hi", "--checkpoint", "x"],
     [["--max_new_tokens", "9", *SAMPLING_OLD, "--stop", "##"],
      ["--max-tokens", "9", *SAMPLING_OLD, "--stop", "##"]],
     ["--max-new-tokens", "9", *SAMPLING_NEW, "--stop", "##"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.9, seed=7, stop=["##"])),
    (["thoughts", "translate", "int x;", "--checkpoint", "x"],
     [["--max_new_tokens", "9", "--temperature", "0.5", "--top_p", "0.9"]],
     ["--max-new-tokens", "9", "--temperature", "0.5", "--top-p", "0.9"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_p=0.9)),
    (["eval", "run", "--benchmark", "gsm8k", "--model", "x"],
     [["--max_new_tokens", "9", "--temperature", "0.5", "--top_p", "0.9", "--seed", "7"],
      ["--max-tokens", "9", "--temperature", "0.5", "--top_p", "0.9", "--seed", "7"]],
     ["--max-new-tokens", "9", "--temperature", "0.5", "--top-p", "0.9", "--seed", "7"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_p=0.9, seed=7)),
    (["eval", "pareval", "generate", "--prompts", "p.json", "--output", "o.json", "--model", "x"],
     [["--max_new_tokens", "9", "--temperature", "0.5", "--top_p", "0.9", "--seed", "7", "--num_samples", "2"]],
     ["--max-new-tokens", "9", "--temperature", "0.5", "--top-p", "0.9", "--seed", "7", "--num-samples", "2"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_p=0.9, seed=7)),
    (["eval", "babeltower"],
     [["--dataset_dir", "d", "--checkpoint_path", "x", "--max_new_tokens", "9", "--temperature", "0.5",
       "--top_p", "0.9", "--seed", "7"]],
     ["--dataset-dir", "d", "--checkpoint-path", "x", "--max-new-tokens", "9", "--temperature", "0.5",
      "--top-p", "0.9", "--seed", "7"],
     GenerationParams(max_new_tokens=9, temperature=0.5, top_p=0.9, seed=7)),
    (["eval", "train-router", "--method", "cluster", "--expert", "e", "--train", "gsm8k=x", "--output", "o"],
     [["--max_new_tokens", "9"], ["--max-tokens", "9"]], ["--max-new-tokens", "9"],
     GenerationParams(max_new_tokens=9)),
]


@pytest.mark.parametrize("command, old_spellings, new, expected", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_old_and_new_spellings_give_the_same_params(capture, command, old_spellings, new, expected):
    assert capture([*command, *new]) == expected
    for old in old_spellings:
        assert capture([*command, *old]) == expected


def test_defaults_are_kept(capture):
    assert capture(["chat", "--model", "x"]) == GenerationParams(max_new_tokens=256, temperature=0.7)
    assert capture(["multitoken", "infer", "--ckpt", "x", "--prompt", "p"]) == GenerationParams(max_new_tokens=128)
    # the benchmark commands switch nucleus sampling off when greedy, and sample by default with several samples
    assert capture(["eval", "run", "--benchmark", "gsm8k", "--model", "x"]) == GenerationParams(max_new_tokens=512, seed=0)
    assert capture(["eval", "run", "--benchmark", "gsm8k", "--model", "x", "--num-samples", "4"]) == \
        GenerationParams(max_new_tokens=512, temperature=0.8, top_p=0.95, seed=0)
    assert capture(["eval", "babeltower", "--dataset-dir", "d", "--checkpoint-path", "x"]) == \
        GenerationParams(max_new_tokens=256, temperature=0.7, top_p=0.95, seed=42)


def test_llama_flags_override_the_config_inference_section(capture, tmp_path):
    (tmp_path / "c.json").write_text('{"inference": {"max_new_tokens": 11, "temperature": 0.3, "top_k": 4}}')
    base = ["llama", "generate", "--prompt", "hi", "--config", "c.json"]
    assert capture(base) == GenerationParams(max_new_tokens=11, temperature=0.3, top_k=4, top_p=0.95)
    assert capture([*base, "--max-tokens", "5"]) == capture([*base, "--max-new-tokens", "5"]) == \
        GenerationParams(max_new_tokens=5, temperature=0.3, top_k=4, top_p=0.95)


def test_llama_evaluate_takes_both_spellings(monkeypatch, tmp_path):
    import mot.moellama.evaluate as ev

    monkeypatch.chdir(tmp_path)
    seen = []

    def fake(**kwargs):
        seen.append(kwargs["max_new_tokens"])
        raise Captured

    monkeypatch.setattr(ev, "EvalOptions", fake)
    for flag in ("--max-tokens", "--max_tokens", "--max-new-tokens"):
        result = CliRunner().invoke(app, ["llama", "evaluate", flag, "17", "--set", "device.type=cpu"])
        assert isinstance(result.exception, Captured), result.output
    assert seen == [17, 17, 17]


def test_serve_default_max_new_tokens_takes_the_old_spelling(monkeypatch):
    import mot.serve as serve

    seen = []

    class Registry:
        @staticmethod
        def from_specs(*args, **kwargs):
            return None

    def create_app(registry, **kwargs):
        seen.append(kwargs["default_max_tokens"])
        raise Captured

    monkeypatch.setattr(serve, "ModelRegistry", Registry)
    monkeypatch.setattr(serve, "create_app", create_app)
    monkeypatch.delenv("MOT_API_KEY", raising=False)
    for flag in ("--default-max-tokens", "--default_max_tokens", "--default-max-new-tokens"):
        result = CliRunner().invoke(app, ["serve", "--model", "x=y", flag, "33"])
        assert isinstance(result.exception, Captured), result.output
    assert seen == [33, 33, 33]


# ------------------------------------------------------------------------------------------ --help


def _commands(command, path: tuple[str, ...] = ()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


ALL = list(_commands(typer.main.get_command(app)))


def test_every_flag_is_dashed_and_max_new_tokens_is_the_one_spelling():
    assert len(ALL) >= 18
    for path, command in ALL:
        for param in command.params:
            for name in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                assert "_" not in name, (path, name)
                assert "max-tokens" not in name, (path, name)
        assert isinstance(command, options.MotCommand), path


@pytest.mark.parametrize("path", [("chat",), ("llama", "generate"), ("llama", "chat"), ("llama", "evaluate"),
                                  ("multitoken", "infer"), ("thoughts", "generate"), ("thoughts", "translate"),
                                  ("eval", "run"), ("eval", "pareval", "generate"), ("eval", "babeltower"),
                                  ("eval", "train-router")])
def test_help_shows_the_one_spelling(path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--max-new-tokens" in result.output
    for old in ("--max-tokens", "--max_tokens", "--max_new_tokens", "--top_p", "--top_k"):
        assert old not in result.output


def test_multitoken_train_help_is_dashed(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["multitoken", "train", "--help"]).output
    for new, old in (("--k-max", "--k_max"), ("--stage1-epochs", "--stage1_epochs"), ("--ppo-steps", "--ppo_steps")):
        assert new in out and old not in out


# ------------------------------------------------------------------------------------------ aliases


def test_aliases_rename_option_names_but_never_values():
    params = [click.Option(["--max-new-tokens"], type=int), click.Option(["--prompt", "-p"]),
              click.Option(["--check/--no-check"], default=True), click.Option(["--verbose"], is_flag=True)]
    args = ["--prompt", "--max_tokens", "-p", "--top_p", "--max_tokens=5", "--no_check", "--verbose", "x_y",
            "--unknown_flag", "--", "--max_tokens"]
    assert canonical_args(params, args) == ["--prompt", "--max_tokens", "-p", "--top_p", "--max-new-tokens=5",
                                            "--no-check", "--verbose", "x_y", "--unknown_flag", "--", "--max_tokens"]


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="top_p"):
        generation_params(8, 0.5, top_p=0.0)
    with pytest.raises(UsageError, match="max_new_tokens"):
        generation_params(-1)
    assert generation_params(8, 0.0, top_p=0.5, top_p_when_greedy=False) == GenerationParams(max_new_tokens=8)

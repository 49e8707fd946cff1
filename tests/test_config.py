"""The config loader: formats, overrides, and one-line errors naming file, key path and expectation."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from mot.config import ConfigModel, apply_overrides, load_config, parse_override, save_config
from mot.errors import ConfigError


class Inner(ConfigModel):
    top_k: int = Field(2, ge=1)
    shared_dim: int | None = None


class Training(ConfigModel):
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)


class Root(ConfigModel):
    experiment_name: str = "exp"
    mot_config: Inner = Inner()
    training: Training = Training()
    expert_models: list[str] = []


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_json_and_hocon_load_to_the_same_typed_config(tmp_path):
    j = write(tmp_path, "a.json", json.dumps({"mot_config": {"top_k": 3}, "expert_models": ["x", "y"]}))
    h = write(tmp_path, "a.hocon", 'mot_config { top_k = 3 }\nexpert_models = [x, "y"]  # comment\n')
    c = write(tmp_path, "a.conf", '{"mot_config": {"top_k": 3}, "expert_models": ["x", "y"]}')
    configs = [load_config(p, Root) for p in (j, h, c)]
    assert all(cfg == configs[0] for cfg in configs)
    assert configs[0].mot_config.top_k == 3 and configs[0].expert_models == ["x", "y"]


def test_hocon_substitutions_resolve(tmp_path):
    p = write(tmp_path, "s.hocon", "base = 5\nmot_config { top_k = ${base} }\n")
    with pytest.raises(ConfigError, match=r"base: unknown key"):
        load_config(p, Root)  # 'base' itself is not a schema key: still reported


def test_misspelt_key_names_file_path_and_suggestion(tmp_path):
    p = write(tmp_path, "bad.json", json.dumps({"mot_config": {"top_kk": 2}}))
    with pytest.raises(ConfigError) as e:
        load_config(p, Root)
    msg = str(e.value)
    assert msg == f"{p}: mot_config.top_kk: unknown key (did you mean 'top_k'?)"
    assert "\n" not in msg


def test_wrong_type_and_out_of_range_name_expected_value(tmp_path):
    p = write(tmp_path, "t.json", json.dumps({"training": {"batch_size": "four"}}))
    with pytest.raises(ConfigError, match=r"t.json: training.batch_size: expected a valid integer.*got 'four'"):
        load_config(p, Root)
    p = write(tmp_path, "r.json", json.dumps({"training": {"learning_rate": -1}}))
    with pytest.raises(ConfigError, match=r"training.learning_rate: expected greater than 0, got -1"):
        load_config(p, Root)


def test_invalid_json_reports_line_and_column(tmp_path):
    p = write(tmp_path, "x.json", '{\n  "a": 1,\n  "b": \n}')
    with pytest.raises(ConfigError, match=r"x.json:4:1: invalid JSON"):
        load_config(p, Root)


def test_invalid_hocon_and_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ConfigError, match="invalid HOCON"):
        load_config(write(tmp_path, "x.hocon", "a { b = \n"), Root)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json", Root)
    with pytest.raises(ConfigError, match="unsupported config format '.yaml'"):
        load_config(write(tmp_path, "x.yaml", "a: 1"), Root)


def test_overrides_parse_json_values_and_create_sections(tmp_path):
    assert parse_override("a.b.c=3") == (["a", "b", "c"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=hello world") == (["a"], "hello world")
    assert parse_override('a=["x", 1]') == (["a"], ["x", 1])
    data = {"training": {"batch_size": 4}}
    out = apply_overrides(data, ["training.learning_rate=3e-4", "mot_config.top_k=1"])
    assert out == {"training": {"batch_size": 4, "learning_rate": 3e-4}, "mot_config": {"top_k": 1}}
    assert data == {"training": {"batch_size": 4}}  # input untouched
    p = write(tmp_path, "o.json", json.dumps(data))
    cfg = load_config(p, Root, ["training.batch_size=8"])
    assert cfg.training.batch_size == 8


def test_bad_overrides_are_one_line_errors():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("training.batch_size")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")
    with pytest.raises(ConfigError, match="training is a int, not a section"):
        apply_overrides({"training": 1}, ["training.x=1"])


def test_override_typo_is_caught_like_a_file_typo(tmp_path):
    p = write(tmp_path, "o.json", "{}")
    with pytest.raises(ConfigError, match=r"training.batch_sise: unknown key \(did you mean 'batch_size'\?\)"):
        load_config(p, Root, ["training.batch_sise=8"])


def test_save_config_round_trips_atomically(tmp_path):
    cfg = Root(mot_config=Inner(top_k=4))
    out = save_config(cfg, tmp_path / "run" / "config.json")
    assert load_config(out, Root) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.json"]  # no temp files left


def test_a_typo_is_reported_before_the_missing_key_it_causes(tmp_path):
    class Strict(ConfigModel):
        experiment_name: str
        top_k: int = 2

    p = write(tmp_path, "typo.json", json.dumps({"experiment_nme": "x"}))
    with pytest.raises(ConfigError, match=r"experiment_nme: unknown key \(did you mean 'experiment_name'\?\)"):
        load_config(p, Strict)


@pytest.mark.parametrize("name", ["run.json", "run.hocon", "run.conf"])
def test_binary_garbage_config_is_one_line_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8\xff")
    with pytest.raises(ConfigError) as err:
        load_config(path, Root)
    assert str(err.value) == (f"{path}: not a text config file (byte 0x89 at offset 0 is not UTF-8); "
                              "give a UTF-8 .json, .hocon or .conf file")
    nul = tmp_path / f"nul-{name}"
    nul.write_bytes(b"{\x00\x00}")
    with pytest.raises(ConfigError, match=r"nul-run\.\w+: not a text config file \(NUL byte at offset 1\)"):
        load_config(nul, Root)


def test_binary_garbage_config_exits_2_from_the_command_line(tmp_path, capsys):
    from mot.cli.main import main

    path = tmp_path / "garbage.json"
    path.write_bytes(bytes(range(128, 256)))
    assert main(["thoughts", "train", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not a text config file" in err

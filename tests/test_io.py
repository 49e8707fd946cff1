"""mot.io: atomic file and directory writes."""

from __future__ import annotations

import json
import os

import pytest

from mot.io import (
    FILE_MODE,
    atomic_directory,
    atomic_file,
    swap_directory,
    write_bytes,
    write_json,
    write_text,
)


class Boom(RuntimeError):
    pass


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_json_round_trips_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "results.json"
    obj = {"b": [1, 2.5, None, True], "a": {"ünïcode": "✓"}, "n": 0}
    assert write_json(target, obj) == target
    assert json.loads(target.read_text(encoding="utf-8")) == obj
    assert target.read_text(encoding="utf-8").endswith("}\n")
    write_json(target, obj, indent=None, separators=(",", ":"), newline=False, ensure_ascii=False, sort_keys=True)
    assert target.read_text(encoding="utf-8") == '{"a":{"ünïcode":"✓"},"b":[1,2.5,null,true],"n":0}'
    assert _names(target.parent) == ["results.json"]
    assert target.stat().st_mode & 0o777 == FILE_MODE


def test_text_and_bytes_replace_the_whole_file(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "a much longer first version\n")
    write_text(target, "short")
    assert target.read_text() == "short"
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["f.txt"]


def test_a_failing_file_writer_leaves_the_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_file(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("half of the new")
            assert target.read_text() == "old"  # nothing visible before the block ends
            raise Boom
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.pt"]

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json(target, {"x": Unserializable()})
    assert target.read_text() == "old" and _names(tmp_path) == ["state.pt"]


def test_temp_file_names_follow_the_prefix(tmp_path):
    target = tmp_path / "model.gguf"
    with atomic_file(target, prefix=f".tmp-{target.name}-{os.getpid()}-", suffix="") as tmp:
        assert tmp.name.startswith(f".tmp-model.gguf-{os.getpid()}-") and not tmp.name.endswith(".tmp")
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_directory_swap_replaces_the_content(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
        (tmp / "stale").write_text("only in v1")
    assert _names(target) == ["stale", "weights"]
    with atomic_directory(target, temp_name=".tmp-ckpt-1", old_name=".tmp-old-ckpt-1") as tmp:
        assert tmp == tmp_path / ".tmp-ckpt-1" and _names(tmp) == []
        (tmp / "weights").write_text("v2")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x").write_text("y")
        assert (target / "weights").read_text() == "v1"
    assert _names(target) == ["sub", "weights"]
    assert (target / "weights").read_text() == "v2" and (target / "sub" / "x").read_text() == "y"
    assert _names(tmp_path) == ["ckpt"]  # no temporary, no old copy


def test_a_failing_directory_writer_keeps_the_old_directory_and_removes_its_temporary(tmp_path):
    target = tmp_path / "step-000010"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(Boom):
        with atomic_directory(target, temp_prefix=".step-000010.tmp-") as tmp:
            (tmp / "weights").write_text("half")
            raise Boom
    assert (target / "weights").read_text() == "old" and _names(target) == ["weights"]
    assert _names(tmp_path) == ["step-000010"]


def test_a_leftover_temporary_of_the_same_name_is_replaced(tmp_path):
    (tmp_path / ".tmp-c-7").mkdir()
    (tmp_path / ".tmp-c-7" / "junk").write_text("from a crash")
    with atomic_directory(tmp_path / "c", temp_name=".tmp-c-7") as tmp:
        assert _names(tmp) == []
        (tmp / "a").write_text("1")
    assert _names(tmp_path / "c") == ["a"] and _names(tmp_path) == ["c"]


def test_swap_keep_existing_keeps_the_first_finished_copy(tmp_path):
    target = tmp_path / "converted"
    target.mkdir()
    (target / "who").write_text("first")
    with atomic_directory(target, keep_existing=True) as tmp:
        (tmp / "who").write_text("second")
    assert (target / "who").read_text() == "first"
    assert _names(tmp_path) == ["converted"]
    fresh = tmp_path / "fresh"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "who").write_text("only")
    swap_directory(tmp_path / "t", fresh, keep_existing=True)
    assert (fresh / "who").read_text() == "only" and not (tmp_path / "t").exists()


def test_swap_over_an_existing_directory_moves_the_old_one_aside_then_deletes_it(tmp_path):
    target, new = tmp_path / "d", tmp_path / "new"
    target.mkdir()
    (target / "v").write_text("1")
    new.mkdir()
    (new / "v").write_text("2")
    swap_directory(new, target, old_name=".d.old-5")
    assert (target / "v").read_text() == "2" and _names(tmp_path) == ["d"]

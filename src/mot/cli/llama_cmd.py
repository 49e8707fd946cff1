"""``mot llama``: train, generate with, chat with, evaluate and export a moellama model.

    mot llama train    [--config configs/moellama.hocon] [--set k=v ...] [--resume PATH|auto] [--nproc N] [--gpus 0,1]
    mot llama generate (--prompt TEXT ... | --prompts-file FILE) [--max-new-tokens N] [--temperature T] [--top-k K]
                       [--top-p P] [--seed S] [--model-path DIR]
    mot llama chat     [--model-path DIR] [--verbose]
    mot llama evaluate [--model-file DIR] [--output report.md] [--prompt TEXT ...] [--benchmark NAME ...]
    mot llama export   --out DIR [--target auto|mixtral|granitemoeshared] [--model-path DIR]

Every command reads ``--config`` (default ``configs/moellama.hocon``) for its defaults: the ``inference``
section for sampling, ``paths.model_path`` for the model; a missing default config just means built-in
defaults.  ``train --nproc/--gpus`` re-launches itself under torchrun (one process per device).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mot.cli import options as opts
from mot.cli.options import MotCommand
from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="moellama: a from-scratch Mixture-of-Experts LLaMA.")

DEFAULT_CONFIG = Path("configs/moellama.hocon")

_CONFIG_OPT = typer.Option(None, "--config", "-c", help="moellama config (.hocon/.json); default configs/moellama.hocon.")
_SET_OPT = typer.Option([], "--set", help="Override a key: --set training.max_steps=50 (repeatable).")


def load_file_config(config: Path | None, overrides: list[str] = ()):
    """The moellama config: ``config`` if given, else the default file when it exists, else defaults."""
    from mot.config import apply_overrides, load_config, validate_config
    from mot.moellama.config import MoeLlamaFileConfig

    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is None:
        return validate_config(apply_overrides({}, overrides), MoeLlamaFileConfig, "<defaults>")
    return load_config(config, MoeLlamaFileConfig, overrides)


def _model_path(model_path: Path | None, cfg) -> Path:
    return model_path if model_path is not None else Path(cfg.paths.model_path)


def _device(cfg) -> str:
    """The config's device (``device.num_cpu_threads`` applied too)."""
    from mot.moellama.config import resolve_device

    if cfg.device.num_cpu_threads:
        import torch

        torch.set_num_threads(cfg.device.num_cpu_threads)
    return str(resolve_device(cfg.device.type, cfg.device.gpu_ids))


# ------------------------------------------------------------------------------------------------ train


@app.command("train", cls=MotCommand)
def train(
    config: Path | None = _CONFIG_OPT,
    overrides: list[str] = _SET_OPT,
    resume: str | None = typer.Option(None, "--resume", help="'auto' (newest checkpoint of the run) or a checkpoint path."),
    nproc: int | None = typer.Option(None, "--nproc", help="Launch N processes under torchrun (DDP)."),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU ids, e.g. 0,1 (one process each)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train moellama (tokenizer, token cache, model) on the config's dataset."""
    from mot.log import setup_logging
    from mot.training import mot_argv, relaunch

    cfg = load_file_config(config, overrides)  # a bad config fails here, before any process starts
    if nproc is None and gpus is None and len(cfg.device.gpu_ids) > 1 and cfg.device.type in ("auto", "cuda"):
        gpus = ",".join(str(g) for g in cfg.device.gpu_ids)  # device.gpu_ids with several GPUs means DDP
    code = relaunch(nproc, gpus, mot_argv(["llama", "train"], ("--config", config), ("--set", overrides),
                                          ("--resume", resume or None), ("--no-progress", not progress)))
    if code is not None:
        if code:
            raise typer.Exit(code)
        return
    from mot.moellama.train import train as run_training

    setup_logging("INFO")
    outcome = run_training(cfg, resume=resume, progress=progress)
    if outcome.model_path is not None:
        s = outcome.summary
        best = f"best val_loss {s['best_val_loss']:.4f} at step {s['best_step']}; " if s["best_val_loss"] else ""
        rate = f"{s['tokens_per_s']:.0f} tokens/s; " if s.get("tokens_per_s") else ""
        typer.echo(f"trained {s['steps']} steps ({s['tokens_seen']:,} tokens) in {s['wall_time_s']:.0f}s; {best}"
                   f"{rate}model saved to {outcome.model_path}")


# --------------------------------------------------------------------------------------------- generate


@app.command("generate", cls=MotCommand)
def generate(
    prompts: list[str] = typer.Option([], "--prompt", "-p", help="A prompt (repeatable; all run as one batch)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="One prompt per line (or a .jsonl of "
                                             "{\"prompt\": ...})."),
    max_new_tokens: int | None = opts.max_new_tokens_option(None, "Default: inference.max_new_tokens.", min=0),
    temperature: float | None = opts.temperature_option(None, min=0.0),
    top_k: int | None = opts.top_k_option(None, min=0),
    top_p: float | None = opts.top_p_option(None),
    seed: int | None = opts.seed_option(),
    stop: list[str] = opts.stop_option(),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts per batch."),
    model_path: Path | None = typer.Option(None, "--model-path", "-m", help="Default: paths.model_path."),
    config: Path | None = _CONFIG_OPT,
    overrides: list[str] = _SET_OPT,
) -> None:
    """Continue prompts with the model (batched); each reply is printed after its prompt."""
    from mot.moellama.checkpoint import load_model
    from mot.moellama.generate import MoeLlamaGenerator

    cfg = load_file_config(config, overrides)
    items = list(prompts) + (read_prompts(prompts_file) if prompts_file else [])
    if not items:
        raise UsageError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    params = opts.generation_params(max_new_tokens, temperature, top_k, top_p, seed, stop, defaults=cfg.inference)
    model, tokenizer, _ = load_model(_model_path(model_path, cfg), device=_device(cfg))
    generator = MoeLlamaGenerator(model, tokenizer)
    replies = []
    for start in range(0, len(items), batch_size):
        replies += generator.generate(items[start:start + batch_size], params)
    for i, (prompt, reply) in enumerate(zip(items, replies, strict=True)):
        if len(items) > 1:
            typer.echo(f"--- [{i + 1}/{len(items)}]")
        typer.echo(prompt + reply)


def read_prompts(path: Path) -> list[str]:
    from mot.errors import DataError

    if not path.is_file():
        raise UsageError(f"--prompts-file {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line.replace("\\n", "\n") for line in lines if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(str(json.loads(line)["prompt"]))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n}: expected a JSON object with a \"prompt\" field") from None
    return out


# ------------------------------------------------------------------------------------------------- chat


@app.command("chat", cls=MotCommand)
def chat(
    model_path: Path | None = typer.Option(None, "--model-path", "-m", help="Default: paths.model_path."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="After each reply: tokens, time, tokens/s."),
    max_new_tokens: int | None = opts.max_new_tokens_option(None, "Default: inference.max_new_tokens.", min=1),
    temperature: float | None = opts.temperature_option(None, min=0.0),
    top_k: int | None = opts.top_k_option(None, min=0),
    top_p: float | None = opts.top_p_option(None),
    seed: int | None = opts.seed_option(),
    config: Path | None = _CONFIG_OPT,
    overrides: list[str] = _SET_OPT,
) -> None:
    """Chat in the terminal: streamed replies, `params`, `exit`; Ctrl+C stops the current reply."""
    from mot.chat import ChatSession
    from mot.moellama.checkpoint import load_model
    from mot.moellama.generate import MoeLlamaGenerator

    cfg = load_file_config(config, overrides)
    params = opts.generation_params(max_new_tokens, temperature, top_k, top_p, seed, defaults=cfg.inference)
    path = _model_path(model_path, cfg)
    typer.echo(f"loading {path} ...", err=True)
    model, tokenizer, directory = load_model(path, device=_device(cfg))
    typer.echo(f"chatting with {directory}; type 'help' for commands, 'exit' to leave.")
    ChatSession(MoeLlamaGenerator(model, tokenizer, name=str(directory)), params, verbose=verbose,
                transcript=True, label="moellama> ").loop()


# --------------------------------------------------------------------------------------------- evaluate


@app.command("evaluate", cls=MotCommand)
def evaluate(
    model_file: Path | None = typer.Option(None, "--model-file", "--model-path", "-m",
                                           help="Model or checkpoint directory. Default: paths.model_path."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Markdown report (default <model>/report.md)."),
    prompts: list[str] = typer.Option([], "--prompt", "-p", help="Generation sample prompt (repeatable)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="Sample prompts, one per line."),
    max_eval_windows: int = typer.Option(256, "--max-eval-windows", min=1, help="Validation windows for perplexity."),
    tasks_per_kind: int = typer.Option(20, "--tasks", min=0, help="Letter-counting and arithmetic items, each."),
    benchmarks: list[str] = typer.Option([], "--benchmark", help="A mot.data benchmark to score too (repeatable)."),
    benchmark_path: Path | None = typer.Option(None, "--benchmark-path", help="Local files of the benchmark."),
    benchmark_limit: int = typer.Option(50, "--benchmark-limit", min=1, help="Items per benchmark."),
    max_new_tokens: int = opts.max_new_tokens_option(64, "New tokens per generation sample.", min=1),
    seed: int = opts.seed_option(0),
    config: Path | None = _CONFIG_OPT,
    overrides: list[str] = _SET_OPT,
) -> None:
    """Perplexity, token accuracy, samples, letter counting and arithmetic (and benchmarks): a markdown report."""
    from mot.moellama.evaluate import EvalOptions, evaluate_checkpoint

    cfg = load_file_config(config, overrides)
    sample_prompts = list(prompts) + (read_prompts(prompts_file) if prompts_file else [])
    options = EvalOptions(
        max_eval_windows=max_eval_windows, tasks_per_kind=tasks_per_kind, prompts=sample_prompts or None,
        benchmarks=list(benchmarks), benchmark_path=benchmark_path, benchmark_limit=benchmark_limit,
        max_new_tokens=max_new_tokens, temperature=cfg.inference.temperature, top_k=cfg.inference.top_k,
        top_p=cfg.inference.top_p, seed=seed,
    )
    report = evaluate_checkpoint(_model_path(model_file, cfg), cfg, options, output=output, device=_device(cfg))
    m = report.metrics
    typer.echo(f"val_loss {m['val_loss']:.4f}  perplexity {m['perplexity']:.2f}  token accuracy "
               f"{m['token_accuracy']:.3f}  letter counting {m['letter_counting']:.2f}  arithmetic "
               f"{m['arithmetic']:.2f}")
    typer.echo(f"report: {report.path}")


# ----------------------------------------------------------------------------------------------- export


@app.command("export", cls=MotCommand)
def export(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (HF model + tokenizer)."),
    target: str = typer.Option("auto", "--target", help="auto | mixtral | granitemoeshared (auto: by shared expert)."),
    model_path: Path | None = typer.Option(None, "--model-path", "-m", help="Default: paths.model_path."),
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Export to an HF-native MoE architecture (Mixtral, or GraniteMoeShared with a shared expert)."""
    from mot.moellama.checkpoint import load_model
    from mot.moellama.export import TARGETS, export_hf

    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    cfg = load_file_config(config)
    model, tokenizer, directory = load_model(_model_path(model_path, cfg))
    written = export_hf(model, out, tokenizer=tokenizer, target=target)
    architecture = json.loads((written / "config.json").read_text())["architectures"][0]
    typer.echo(f"exported {directory} as {architecture} to {written}")

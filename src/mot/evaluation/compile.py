"""Compilation accuracy for CUDA: does ``nvcc -c`` accept the code?

No GPU is needed (``-c`` only compiles). When ``nvcc`` is absent the answer is ``None``:
unavailable, never guessed.  ``nvcc`` runs inside :func:`mot.evaluation.sandbox.run_sandboxed`, like every
other program that model-written code drives.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CUDA_PRELUDE", "CompileResult", "compile_cuda", "compiles_cuda", "cuda_compile_rate", "nvcc_path"]

# Headers a translated kernel commonly relies on without including them (BabelTower references
# are bare functions). ``#line`` makes nvcc's error lines refer to the user's code.
CUDA_PRELUDE = """\
#include <cuda_runtime.h>
#include <device_launch_parameters.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <cmath>
#include <cfloat>
#include <climits>
#include <algorithm>
"""


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    stderr: str


def nvcc_path() -> str | None:
    """The ``nvcc`` on PATH, or None."""
    return shutil.which("nvcc")


def compile_cuda(
    code: str, *, prelude: str = CUDA_PRELUDE, timeout_s: float = 120.0, extra_args: Sequence[str] = ()
) -> CompileResult | None:
    """Compile ``prelude + code`` with ``nvcc -c`` inside the sandboxed runner (model-written code
    drives the preprocessor and the compiler: ``#include "/etc/..."`` reads, huge outputs); None when
    nvcc is absent.  A compile that exceeds ``timeout_s`` counts as a failure."""
    from mot.evaluation.sandbox import run_sandboxed

    nvcc = nvcc_path()
    if nvcc is None:
        return None
    toolkit = Path(os.path.realpath(nvcc)).parents[1]  # the CUDA toolkit, visible read-only in the sandbox
    source = f'{prelude}#line 1 "kernel.cu"\n{code}\n'
    result = run_sandboxed({"kernel.cu": source}, language="cuda",
                           cmd=[nvcc, "-c", "kernel.cu", "-o", "kernel.o", *extra_args],
                           timeout_s=timeout_s, cpu_s=math.ceil(timeout_s), memory_mb=1 << 16, max_procs=64,
                           max_file_mb=256, max_disk_mb=1024, max_output_kb=256, gpu=False,
                           ro_paths=[str(toolkit)])
    if result.status == "timeout":
        return CompileResult(False, f"nvcc timed out after {timeout_s} s")
    if result.status == "error":
        return CompileResult(False, f"nvcc could not run in the sandbox: {result.reason}")
    return CompileResult(result.status == "ok", (result.stderr or result.reason)[-4000:])


def compiles_cuda(code: str, **kwargs) -> bool | None:
    """True/False from :func:`compile_cuda`; None when nvcc is absent.  Blank code is False: an empty
    translation is not a compiling one, even though ``nvcc -c`` accepts an empty file."""
    if not code.strip():
        return False
    result = compile_cuda(code, **kwargs)
    return None if result is None else result.ok


def cuda_compile_rate(preds: Sequence[str], *, workers: int = 2, **kwargs) -> float | None:
    """Percentage of ``preds`` that compile (``workers`` nvcc processes at once); None without nvcc."""
    if nvcc_path() is None:
        return None
    if not preds:
        raise ValueError("no predictions to compile")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda code: compiles_cuda(code, **kwargs), preds))
    return 100.0 * sum(bool(r) for r in results) / len(results)

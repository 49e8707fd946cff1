"""torchrun DDP: detect and initialise from environment variables, small collectives, and a launcher.

One process per device.  ``torchrun`` (or ``launch_torchrun``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed`` reads them (``env://``), picking
nccl on CUDA and gloo on CPU.  Without them the same code runs as a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mot.errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False  # this process group was created by init_distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    """True in a worker started by torchrun / torch.distributed.run (or anything setting the same env)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def rank_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA is available, else CPU."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("training.device is 'cuda' but no CUDA device is visible; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise UsageError(f"training.device: unknown device '{preference}'; use auto, cpu, cuda or cuda:N") from exc
    return device


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the process group described by the environment, or describe a single process."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        if dist.is_available() and dist.is_initialized():  # a caller set it up already
            rank, world = dist.get_rank(), dist.get_world_size()
            device = rank_device(device_preference, int(os.environ.get("LOCAL_RANK", rank)))
            return DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", rank)), device)
        return DistEnv(0, 1, 0, rank_device(device_preference, 0))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = rank_device(device_preference, local_rank)
    if dist.is_initialized():
        return DistEnv(rank, world, local_rank, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, device, initialized_here=True)


def shutdown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    if not env.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(env: DistEnv, obj: Any) -> list[Any]:
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def torchrun_command(
    nproc: int | None,
    argv: Sequence[str],
    gpus: str | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment ``launch_torchrun`` runs (separate so it can be inspected).

    ``argv`` is what torchrun starts in each worker: ``["-m", "mot", "thoughts", "train", "-c", CFG]`` or
    ``["script.py", ...]``.  ``gpus`` ("0,1") sets ``CUDA_VISIBLE_DEVICES`` and, when ``nproc`` is None,
    the process count.  ``extra_args`` are torchrun's own flags (``--nnodes 2 --node-rank 0
    --rdzv-endpoint host:29500``...); without rendezvous flags the run is ``--standalone``.
    """
    env = dict(os.environ)
    if gpus is not None:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids):
            raise UsageError(f"--gpus expects device ids like '0,1,2', got '{gpus}'")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        if nproc is None:
            nproc = len(ids)
        elif nproc > len(ids):
            raise UsageError(f"--nproc {nproc} is more than the {len(ids)} GPU(s) given by --gpus {gpus}")
    if nproc is None or nproc < 1:
        raise UsageError(f"--nproc must be a positive number of processes, got {nproc}")
    if not argv:
        raise UsageError("launch_torchrun needs the command to run in each worker")
    extra = list(extra_args)
    multi_node = any(a.split("=")[0] in ("--rdzv-endpoint", "--rdzv_endpoint", "--master-addr",
                                          "--master_addr", "--standalone") for a in extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if not multi_node:
        cmd.append("--standalone")
    cmd += extra + list(argv)
    return cmd, env


def launch_torchrun(
    nproc: int | None,
    argv: Sequence[str],
    gpus: str | None = None,
    extra_args: Sequence[str] = (),
) -> int:
    """Re-execute ``argv`` under ``python -m torch.distributed.run``; returns torchrun's exit code.

    The workers see the torchrun environment, so the same command detects it (``under_torchrun``) and
    trains as one rank instead of launching again.
    """
    if under_torchrun():
        raise UsageError("already running under torchrun; drop --nproc/--gpus or launch torchrun yourself")
    cmd, env = torchrun_command(nproc, argv, gpus, extra_args)
    return subprocess.call(cmd, env=env)


LAUNCH_OPTIONS = ("--nproc", "--gpus")


def mot_argv(command: Sequence[str], *options: tuple[str, Any]) -> list[str]:
    """What a worker runs: ``["-m", "mot", *command]`` plus each ``(flag, value)`` option.

    A value of None or False leaves the flag out, True gives the bare flag, a list repeats the flag
    once per item, anything else is ``[flag, str(value)]``."""
    argv = ["-m", "mot", *command]
    for flag, value in options:
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def relaunch(nproc: int | None, gpus: str | None, argv: Sequence[str]) -> int | None:
    """Re-run a command under torchrun, one process per device, when ``--nproc``/``--gpus`` ask for it.

    ``argv`` is what each worker runs (``mot_argv(...)``; the launcher's own options are stripped, so
    the workers run as ranks instead of launching again).  Returns torchrun's exit code, or None where
    this process runs the command itself: neither option given, or already a torchrun worker."""
    if (nproc is None and gpus is None) or under_torchrun():
        return None
    return launch_torchrun(nproc, strip_launch_options(argv), gpus=gpus)


def strip_launch_options(argv: Sequence[str], options: Sequence[str] = LAUNCH_OPTIONS) -> list[str]:
    """``argv`` without the launcher's own options (``--nproc 2``, ``--gpus=0,1``...), for the workers:
    ``["thoughts", "train", "-c", "c.json", "--nproc", "2"]`` -> ``["thoughts", "train", "-c", "c.json"]``."""
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip_next = "=" not in arg
            continue
        out.append(arg)
    return out

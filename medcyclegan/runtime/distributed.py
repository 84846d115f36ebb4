"""Several processes, one run: torchrun detection, the process group, sharding and relaunching.

Training on N GPUs (or N CPU processes) runs one process per device under ``torchrun``::

    torchrun --nproc_per_node 4 -m medcyclegan train --src mr/ --tgt ct/ -o runs/x
    medcyclegan train --gpus 4 ...          # the same: relaunches itself through torchrun

    # two nodes of 8 GPUs (run on each node; data and run folder on storage both nodes see):
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 -m medcyclegan train ...

The training loop reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) through
:func:`detect`, joins the process group (NCCL on CUDA, gloo on the CPU) and wraps its networks in
``DistributedDataParallel``. Each process takes its share of
every epoch's batches with :func:`shard`, so the global order of the batches stays a pure function of
(seed, epoch) and resuming stays exact. Only rank 0 writes files and logs; the others wait at a
barrier.

Converting many files on several processes uses the same :func:`shard` (no process group is needed:
the files are independent). :func:`medcyclegan.convert.convert_paths` does it under torchrun::

    torchrun --nproc_per_node 4 -m medcyclegan convert scans/ -o synth/ --model runs/x
    medcyclegan convert scans/ -o synth/ --model runs/x --gpus 4       # the same
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medcyclegan.errors import ConfigError
from medcyclegan.runtime.threads import torchrun_threads_environment

logger = logging.getLogger("medcyclegan")

T = TypeVar("T")

# Rank 0 validates and writes samples while the other ranks wait: allow that much time.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a multi-process run (a single process is rank 0 of 1).

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes of the run.
        local_rank: rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that logs and writes files (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer; got {text!r}") from None


def detect() -> DistributedContext:
    """The context from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables this is a single process: rank 0 of 1.

    Raises:
        ConfigError: for inconsistent values.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}"
        )
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def in_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(context: DistributedContext, device: torch.device) -> torch.device:
    """Joins the process group (once per process) and returns this process's device.

    On CUDA each process takes GPU ``local_rank`` and NCCL; on the CPU gloo. A single process is left
    alone. The group is destroyed when the process exits.

    Args:
        context: from :func:`detect`.
        device: the device the config asks for (``cuda`` or ``cpu``).

    Returns:
        ``cuda:<local_rank>`` on CUDA, else ``device``.

    Raises:
        ConfigError: if this node has fewer GPUs than processes.
    """
    if not context.is_distributed:
        return device
    device = local_device(context, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": COLLECTIVE_TIMEOUT}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds the GPU: barriers and NCCL setup need no guessing
        dist.init_process_group(
            backend, rank=context.rank, world_size=context.world_size, init_method="env://", **kwargs
        )
        atexit.register(cleanup)
    return device


def cpu_barrier(context: DistributedContext) -> None:
    """Waits for every process, over a gloo group joined on first use (for work that needs no GPU group).

    Uses the process group already joined, if any (training's); else joins a gloo group through the
    torchrun environment (``MASTER_ADDR``/``MASTER_PORT``). Nothing for a single process.
    """
    if not context.is_distributed:
        return
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo",
            rank=context.rank,
            world_size=context.world_size,
            init_method="env://",
            timeout=COLLECTIVE_TIMEOUT,
        )
        atexit.register(cleanup)
    dist.barrier()


def local_device(context: DistributedContext, device: torch.device) -> torch.device:
    """This process's device: GPU ``local_rank`` on CUDA under torchrun (made current), else ``device``.

    Raises:
        ConfigError: if this node has fewer GPUs than processes.
    """
    if not context.is_distributed or device.type != "cuda":
        return device
    available = torch.cuda.device_count()
    if context.local_rank >= available:
        raise ConfigError(
            f"process {context.rank} needs GPU {context.local_rank}, but this node has {available}; "
            "start at most one process per GPU"
        )
    torch.cuda.set_device(context.local_rank)
    return torch.device("cuda", context.local_rank)


def cleanup() -> None:
    """Leaves the process group if this process joined one (safe to call more than once)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Waits for every process (nothing for a single one)."""
    if context.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sums ``tensor`` over the processes in place and returns it (unchanged for a single process)."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` for a single process). Tensors: CPU only."""
    if not context.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T, context: DistributedContext, source: int = 0) -> T:
    """Rank ``source``'s ``obj`` on every process."""
    if not context.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def wrap_ddp(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` in a multi-process run; ``module`` itself otherwise.

    ``find_unused_parameters=False``: every parameter of a wrapped network gets a gradient in each of
    its backward passes (the trainer runs frozen discriminators outside the wrapper), which saves
    a graph traversal per step. Buffers are broadcast only if the network has any (ours have none).
    """
    if not context.is_distributed:
        return module
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        broadcast_buffers=any(True for _ in module.buffers()),
        gradient_as_bucket_view=True,
    )


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The share of ``items`` that process ``rank`` of ``world_size`` handles: every world_size-th one.

    Strided, so that the shares differ in length by at most one and consecutive items (the batches of
    one global step, or files sorted by size) spread over the processes. Every item goes to exactly
    one process; the union over ranks, in the order ``items[0], items[1], ...``, is ``items``.

    Args:
        items: the whole list (the same on every process).
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes, >= 1.

    Raises:
        ValueError: for an invalid rank or world size.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1; got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}); got {rank!r}")
    return list(items[rank::world_size])


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--gpus 4`` or ``--gpus=4``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc_per_node: int, *, python: str | None = None) -> list[str]:
    """The command that runs ``medcyclegan <argv>`` on ``nproc_per_node`` processes of this node.

    ``--gpus`` is removed from ``argv`` (the relaunched processes must not relaunch again).

    Example:
        >>> torchrun_command(["train", "--src", "a", "--gpus", "2"], 2, python="python")
        ['python', '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'medcyclegan', 'train', '--src', 'a']
    """
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ConfigError(f"--gpus must be an integer >= 1; got {nproc_per_node!r}")
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        # One node, a free port picked by torchrun itself: two runs on one machine do not collide.
        "--standalone",
        "--nproc_per_node",
        str(nproc_per_node),
        "-m",
        "medcyclegan",
        *strip_option(argv, "--gpus"),
    ]


def check_gpus(gpus: int, verb: str = "train") -> None:
    """Fails fast when ``gpus`` CUDA devices are not there.

    Args:
        gpus: GPUs asked for.
        verb: the command being relaunched, for the hint in the message.

    Raises:
        ConfigError: no CUDA, or fewer devices than asked for.
    """
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > available:
        raise ConfigError(
            f"--gpus {gpus} asks for more GPUs than this machine has ({available}); for several CPU "
            f"processes run torchrun --nproc_per_node N -m medcyclegan {verb} --device cpu ..."
        )


def launch_with_torchrun(argv: Sequence[str], nproc_per_node: int, *, require_gpus: bool = True) -> int:
    """Runs ``medcyclegan <argv>`` through torchrun on this node and returns its exit status.

    SIGINT, SIGTERM and SIGHUP received by this process are passed on to torchrun, which passes them
    to every training process (each saves ``last.pt`` and stops).

    Args:
        argv: the command line after the program name, e.g. ``sys.argv[1:]`` (``--gpus`` is dropped).
        nproc_per_node: processes to start (one per GPU).
        require_gpus: check that this many GPUs exist first.

    Raises:
        ConfigError: already inside torchrun, or not enough GPUs.
    """
    if in_torchrun():
        raise ConfigError("--gpus cannot be used inside torchrun; torchrun already started the processes")
    if require_gpus:
        verb = next((arg for arg in argv if arg in ("train", "convert")), "train")
        check_gpus(nproc_per_node, verb)
    command = torchrun_command(argv, nproc_per_node)
    logger.info("starting %d processes: %s", nproc_per_node, " ".join(command))
    # Its own session: a Ctrl-C in the terminal reaches torchrun once (forwarded below), not twice.
    # Each process its share of the CPUs (torchrun alone would give each one thread).
    environment = {**os.environ, **torchrun_threads_environment(nproc_per_node)}
    process = subprocess.Popen(command, start_new_session=True, env=environment)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

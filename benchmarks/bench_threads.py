"""CPU threads on a shared machine: one training process alone and two at once, per thread setting.

Each setting (``--variants``) runs as fresh child processes of this script, each timing CycleGAN
training steps (``CycleGAN.train_step`` of the ``quick-cpu`` preset at ``--size`` px, random batches)
after ``--warmup`` untimed steps:

* ``cores``: ``--threads <CPUs>`` (every core, libgomp's default spinning): today's default before
  ``auto``, and what ``--threads N`` still does;
* ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
* ``auto``: ``--threads auto`` (:mod:`medcyclegan.runtime.threads`: thread count from affinity,
  quota and load at start, then the governor between steps; OpenMP waits at their defaults);
* ``auto:N``: ``auto`` with ``GOMP_SPINCOUNT=N`` set (a wait variable the user sets wins);
* ``spin:N``: every core with ``GOMP_SPINCOUNT=N``;
* ``threads:N``: ``--threads N``.

The children resolve their threads with the functions the CLI's root callback calls
(:func:`~medcyclegan.runtime.threads.apply_fixed`, :func:`~medcyclegan.runtime.threads.apply_auto`)
before they import torch, as ``medcyclegan`` does. The OpenMP variables of this shell
(``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``, ``MKL_NUM_THREADS``)
are removed from the children's environment, so each setting is only what it names.

Scenarios (``--starts``): ``alone``, one process; ``staggered``, the second process starts when the
first has warmed up (a job joining a busy machine: auto's load reading sees the first); ``together``,
both start at once (each sees the other starting up). Two-process numbers are taken only over the
window in which both are past their warm-up: the median seconds per step of each process in it, and
its ratio to ``cores`` alone (> 1: slower).

Usage (about 3-4 minutes on a quiet 2-core machine)::

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --variants cores,passive,auto,spin:1000,spin:30000 --steps 15
    python benchmarks/bench_threads.py --size 32 --steps 2 --warmup 1 --variants cores,auto   # smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcyclegan.runtime.threads import (
    ThreadChoice,
    adjust_threads,
    affinity_cpus,
    apply_auto,
    apply_fixed,
    decide_auto,
    parse_threads,
)

# OpenMP / MKL variables of the calling shell that would blur the settings compared.
CLEARED_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
)
STARTS = ("alone", "staggered", "together")
# A child that has not reported for this long is taken as hung.
CHILD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Variant:
    """A thread setting: the --threads value and extra environment of its children."""

    name: str
    threads: str
    environment: dict[str, str]


def parse_variant(text: str, cpus: int) -> Variant:
    """``cores``, ``passive``, ``auto``, ``spin:N`` or ``threads:N`` -> a :class:`Variant`."""
    kind, _, value = text.partition(":")
    if kind == "cores" and not value:
        return Variant(text, str(cpus), {})
    if kind == "passive" and not value:
        return Variant(text, str(cpus), {"OMP_WAIT_POLICY": "PASSIVE"})
    if kind == "auto" and not value:
        return Variant(text, "auto", {})
    if kind == "auto" and value.isdigit():
        return Variant(text, "auto", {"GOMP_SPINCOUNT": value})
    if kind == "spin" and value.isdigit():
        return Variant(text, str(cpus), {"GOMP_SPINCOUNT": value})
    if kind == "threads" and value.isdigit() and int(value) >= 1:
        return Variant(text, value, {})
    raise ValueError(f"unknown variant {text!r} (cores, passive, auto, auto:N, spin:N, threads:N)")


# ----------------------------------------------------------------------------- child
def child(args: argparse.Namespace) -> None:
    """Times training steps until ``--steps`` are done and the stop file exists; reports on stdout."""
    fixed = parse_threads(args.threads)
    # As the CLI's root callback: the choice and its environment before torch is imported.
    choice: ThreadChoice = apply_fixed(fixed) if fixed is not None else apply_auto(decide_auto())
    # lazy: torch must be imported after apply_auto has set OMP_NUM_THREADS and the wait variables.
    import torch

    from medcyclegan.config import builtin_config_path, load_config
    from medcyclegan.models import model_class
    from medcyclegan.train.schedule import lr_rule

    print(f"CHOICE {json.dumps({'threads': torch.get_num_threads(), 'line': choice.describe()})}", flush=True)
    cfg = load_config(builtin_config_path("quick-cpu"), {"data.image_size": args.size, "train.device": "cpu"})
    model = model_class(cfg.model.kind)(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    model.wrap_for_training(False)
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.optim.batch_size, 1, args.size, args.size)

    def batch() -> dict[str, torch.Tensor]:
        image = torch.rand(shape, generator=generator) * 2 - 1
        return {"image": image, "mask": (image > -0.9).float()}

    batches = [{"A": batch(), "B": batch()} for _ in range(4)]
    for i in range(args.warmup):
        model.train_step(batches[i % len(batches)])
        adjust_threads()
    print(f"WARM {time.monotonic()}", flush=True)
    stop = Path(args.stop_file)
    done = 0
    while done < args.max_steps:
        model.train_step(batches[done % len(batches)])
        adjust_threads()  # as the Trainer does between steps (auto only)
        done += 1
        print(f"STEP {time.monotonic()}", flush=True)
        if done >= args.steps and stop.exists():
            break


# ----------------------------------------------------------------------------- parent
@dataclass
class Child:
    """One running child: its process and what it reported (read on a thread)."""

    process: subprocess.Popen[str]
    errors: Path
    choice: dict[str, Any] = field(default_factory=dict)
    warm: float | None = None
    steps: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, _, value = line.strip().partition(" ")
            with self.lock:
                if kind == "CHOICE":
                    self.choice = json.loads(value)
                elif kind == "WARM":
                    self.warm = float(value)
                elif kind == "STEP":
                    self.steps.append(float(value))

    def steps_between(self, start: float, end: float = float("inf")) -> list[float]:
        """Durations of the steps that began at or after ``start`` and ended by ``end``."""
        with self.lock:
            ends = ([self.warm] if self.warm is not None else []) + self.steps
        return [b - a for a, b in itertools.pairwise(ends) if a >= start and b <= end]


def start_child(variant: Variant, args: argparse.Namespace, stop_file: Path) -> Child:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES}
    env.update(variant.environment)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--threads",
        variant.threads,
        "--size",
        str(args.size),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--max-steps",
        str(args.steps * 20),
        "--stop-file",
        str(stop_file),
    ]
    # stderr to a file: a pipe nobody reads could fill up and stop the child.
    errors = stop_file.with_name(f"child{len(list(stop_file.parent.glob('*.err')))}.err")
    with errors.open("w") as error_file:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=error_file, text=True)
    running = Child(process, errors)
    threading.Thread(target=running.read, daemon=True).start()
    return running


def wait_for(condition: Any, children: list[Child]) -> None:
    """Polls ``condition()`` until true; raises if a child exits early or nothing happens for long."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not condition():
        for c in children:
            if c.process.poll() is not None and c.process.returncode != 0:
                tail = c.errors.read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"child exited with {c.process.returncode}: {' | '.join(tail)}")
        if time.monotonic() > deadline:
            raise RuntimeError("children took too long")
        time.sleep(0.05)


def run_scenario(variant: Variant, start: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs one setting in one scenario; one result row per process."""
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as folder:
        stop_file = Path(folder) / "stop"
        count = 1 if start == "alone" else 2
        children = [start_child(variant, args, stop_file)]
        try:
            if start == "staggered":
                wait_for(lambda: children[0].warm is not None, children)
            if count == 2:
                children.append(start_child(variant, args, stop_file))
            wait_for(lambda: all(c.warm is not None for c in children), children)
            window_start = max(c.warm for c in children if c.warm is not None)
            wait_for(
                lambda: all(len(c.steps_between(window_start)) >= args.steps for c in children), children
            )
            stop_file.touch()
            # Each child's timed steps end where the first of them stopped: all overlap.
            for c in children:
                c.process.wait(timeout=CHILD_TIMEOUT_S)
        finally:
            for c in children:
                if c.process.poll() is None:
                    c.process.kill()
                    c.process.wait()
        window_end = min(c.steps[-1] for c in children)
        rows = []
        for index, c in enumerate(children):
            durations = c.steps_between(window_start, window_end)
            rows.append(
                {
                    "variant": variant.name,
                    "start": start,
                    "process": index + 1,
                    "threads": c.choice.get("threads"),
                    "choice": c.choice.get("line", ""),
                    "steps": len(durations),
                    "seconds_per_step": statistics.median(durations) if durations else float("nan"),
                }
            )
        return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="cores,passive,auto", help="comma list [cores,passive,auto]")
    parser.add_argument(
        "--starts", default="alone,staggered,together", help=f"comma list of {', '.join(STARTS)}"
    )
    parser.add_argument("--size", type=int, default=64, help="slice size in px [64]")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per process [15]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first [3]")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=300, help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    cpus = len(affinity_cpus())
    try:
        variants = [parse_variant(v.strip(), cpus) for v in args.variants.split(",") if v.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    starts = [s.strip() for s in args.starts.split(",") if s.strip()]
    if not set(starts) <= set(STARTS) or not starts:
        parser.error(f"--starts: a comma list of {', '.join(STARTS)}")
    # The baseline of every ratio: today's default (every core, default spinning), alone.
    if "alone" not in starts:
        starts = ["alone", *starts]
    if "cores" not in [v.name for v in variants]:
        variants = [parse_variant("cores", cpus), *variants]
    print(
        f"{cpus} CPU(s) in the affinity set; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; quick-cpu at {args.size} px, "
        f"median s/step of {args.steps} steps after {args.warmup} warm-up"
    )
    rows: list[dict[str, Any]] = []
    for variant in variants:
        for start in starts:
            rows += run_scenario(variant, start, args)
    baseline = next(r["seconds_per_step"] for r in rows if r["variant"] == "cores" and r["start"] == "alone")
    print(f"\n{'setting':<12} {'start':<10} {'proc':>4} {'threads':>7} {'s/step':>8} {'vs cores alone':>15}")
    for row in rows:
        row["ratio_to_cores_alone"] = row["seconds_per_step"] / baseline
        print(
            f"{row['variant']:<12} {row['start']:<10} {row['process']:>4} {row['threads']!s:>7} "
            f"{row['seconds_per_step']:>8.3f} {row['ratio_to_cores_alone']:>14.2f}x"
        )
    auto_rows = [row for row in rows if row["variant"] == "auto"]
    if auto_rows:
        print("\nwhat auto chose:")
    for row in auto_rows:
        print(f"  {row['start']} #{row['process']}: {row['choice']}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

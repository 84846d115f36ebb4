"""CPU threads on a shared machine: ``medcyclegan --threads auto`` (the default) and ``--threads N``.

Measured on a 2-core machine (tiny model, 2 threads): one training process 0.32 s/step, two at once
1.16 s/step each. torch's CPU wheel runs its threads on GNU OpenMP (libgomp, see
``torch.__config__.parallel_info()``), whose idle threads spin for a while (``GOMP_SPINCOUNT``,
300 000 polls by default) before they sleep; two processes that each spin on every core take the
cores from each other. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) helps two processes but slows one
alone (0.32 -> 0.47 s/step): every wake-up costs a system call, and a training step has thousands of
short parallel regions.

``auto`` therefore decides two things, before torch is first imported (OpenMP reads its settings
once, when torch loads it):

* **how many threads**: the CPUs this process may run on (:func:`os.sched_getaffinity`), at most the
  cgroup CPU quota (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of v1:
  a container's ``--cpus``), rounded down, less the CPUs that other processes keep busy now
  (:func:`choose_threads`), at least 1; an ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) the user
  set wins over all of this. Two jobs started together each see the other starting up: on 2 cores
  each takes one;
* **how idle threads wait**: not at all differently. A start-up decision cannot see a job that
  starts after it, and a shorter spin (``GOMP_SPINCOUNT=10000``, tried) cost a process alone up to
  a quarter of its speed; instead the long loops re-measure the load while they run
  (:class:`ThreadGovernor`), and a process with one thread per free core has nothing to spin
  against. ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and ``KMP_BLOCKTIME`` stay as the user set them
  (or at libgomp's defaults).

The choice is applied by :func:`apply_auto` in the CLI's root callback, which runs before any verb
imports torch: torch's count through ``OMP_NUM_THREADS`` in the environment (a verb that never
imports torch does not pay its 2 s import for it), our loops' through
:func:`medcyclegan.parallel.set_worker_threads`. Where torch is loaded already (the CLI called
in-process), torch's count is set directly and the OpenMP variables, too late, are left unset.

How busy the machine is (:func:`measure_other_load`), from the cheapest source that answers:

1. ``/proc/loadavg``: the tasks runnable at this instant and the 1-minute load average. Free, but
   one instant says little, and the average lags (a job started 10 s ago counts about 0.15, one that
   stopped 30 s ago still about 0.6). When nothing else is runnable now and the average is below
   half a CPU, the machine is quiet and nothing more is read.
2. Otherwise two readings of ``/proc/stat`` :data:`LOAD_SAMPLE_SECONDS` apart, on the CPUs this
   process may use: the CPUs that other processes kept busy in that window (our own CPU time is
   subtracted). That costs 0.1 s of start-up, only on a machine that is not quiet.

``--threads N`` does what it always did: torch and medcyclegan's own loops use N threads, and the
environment is not touched. Children: DataLoader workers use one torch thread each (torch sets it);
``--gpus N`` relaunches through torchrun with ``OMP_NUM_THREADS`` set to each process's share of the
CPUs (:func:`torchrun_threads_environment`) unless the user set it.

This module imports no torch at its top: the CLI's root callback calls it before torch is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from medcyclegan.errors import ConfigError
from medcyclegan.parallel import set_worker_threads

logger = logging.getLogger("medcyclegan")

THREADS_AUTO = "auto"
# More threads than any machine has cores; far below what exhausts memory creating them.
MAX_THREADS = 1024
# The --threads help (the root callback's option).
THREADS_HELP = (
    "CPU threads for torch and for medcyclegan's own parallel steps (gzip, body masks): a number, or "
    "auto: the CPUs this process may use (affinity, container CPU quota) less those other processes "
    "keep busy, measured at start and every few seconds while training or converting, so that jobs "
    "sharing the machine do not slow each other many times over. OMP_NUM_THREADS set in the "
    "environment wins over auto \\[default: auto]."
)
# Thread counts torch reads at import (in this order); one set by the user is used as it is. An
# invalid value (0, text) counts as unset: OpenMP would ignore it too.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Variables that decide how idle OpenMP threads wait: medcyclegan never sets them.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# The /proc/stat window when the machine is not plainly quiet.
LOAD_SAMPLE_SECONDS = 0.1
# Below this 1-minute load average (and nothing else runnable now) the machine counts as quiet.
QUIET_LOAD_AVERAGE = 0.5

_PROC_STAT = Path("/proc/stat")
_PROC_LOADAVG = Path("/proc/loadavg")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """What ``--threads`` resolved to, and why.

    Attributes:
        threads: CPU threads for torch and for our parallel loops.
        reason: one line for ``--verbose``: where the number comes from.
        environment: the OpenMP variables medcyclegan set (empty: none).
        adaptive: ``auto`` from the machine's load (not from the environment): the count follows
            the load while the job runs (:class:`ThreadGovernor`, :func:`adjust_threads`).
    """

    threads: int
    reason: str
    environment: dict[str, str]
    adaptive: bool = False

    def describe(self) -> str:
        """The ``--verbose`` line, e.g. ``threads: 1 (auto: 2 CPUs ..., 1.1 busy); following the load``."""
        how = "; following the load" if self.adaptive else ""
        return f"threads: {self.threads} ({self.reason}){how}"


def parse_threads(text: str | None) -> int | None:
    """The ``--threads`` value: ``None`` for ``auto`` (or no value), else N in 1 .. :data:`MAX_THREADS`.

    Raises:
        ConfigError: not ``auto`` and not an integer, below 1, or above :data:`MAX_THREADS`.
    """
    if text is None or text.strip().lower() == THREADS_AUTO:
        return None
    try:
        threads = int(text.strip())
    except ValueError:
        raise ConfigError(f"--threads must be auto or an integer >= 1; got {text!r}") from None
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1; got {threads}")
    if threads > MAX_THREADS:
        # e.g. --threads 100000 ended in a MemoryError traceback when the pools were created.
        raise ConfigError(f"--threads must be at most {MAX_THREADS}; got {threads}")
    return threads


# ----------------------------------------------------------------------------- what we may use
def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def parse_cpu_max(text: str) -> float | None:
    """CPUs a cgroup v2 ``cpu.max`` allows (``"200000 100000"`` -> 2.0; ``"max 100000"`` -> None)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs a cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` allow (quota -1: no limit)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_paths(text: str) -> dict[str, str]:
    """Controller -> group path of ``/proc/self/cgroup`` (``""``: the cgroup v2 hierarchy)."""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2].strip()
    return groups


def _group_quotas(root: Path, group: str, read_quota: Callable[[Path], float | None]) -> list[float]:
    """The quotas of ``group`` and of each parent up to ``root`` (a limit on a parent binds too).

    Inside a container the group of ``/proc/self/cgroup`` may not exist under ``root`` (a cgroup
    namespace shows the container's group as the root): the walk starts at the root then.
    """
    folder = root / group.lstrip("/")
    if not folder.is_dir() or root not in (folder, *folder.parents):
        folder = root
    quotas = []
    while True:
        quota = read_quota(folder)
        if quota is not None:
            quotas.append(quota)
        if folder == root:
            return quotas
        folder = folder.parent


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    return parse_cpu_max(text) if text else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    return parse_cfs_quota(quota, period) if quota and period else None


def cgroup_cpu_quota(cgroup_root: Path = _CGROUP_ROOT, self_cgroup: Path = _PROC_SELF_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (the smallest over its ancestors); None: none.

    cgroup v2 (mounted at ``cgroup_root``): ``cpu.max``; v1: the ``cpu`` controller's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. A container started with ``--cpus 2.5`` reads 2.5.
    """
    groups = _cgroup_paths(_read(self_cgroup) or "")
    quotas: list[float] = []
    if (cgroup_root / "cgroup.controllers").exists():
        quotas += _group_quotas(cgroup_root, groups.get("", "/"), _v2_quota)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (cgroup_root / name / "cpu.cfs_quota_us").exists():
            quotas += _group_quotas(cgroup_root / name, groups.get("cpu", "/"), _v1_quota)
            break
    return min(quotas) if quotas else None


def allowed_threads(cpus: int, quota: float | None) -> int:
    """Threads the CPUs and the quota allow: ``min(cpus, floor(quota))``, at least 1."""
    limit = cpus if quota is None else min(cpus, math.floor(quota + 1e-9))
    return max(1, limit)


# ----------------------------------------------------------------------------- how busy it is
def parse_loadavg(text: str) -> tuple[float, int]:
    """``(1-minute load average, tasks runnable now)`` of ``/proc/loadavg`` (``"0.46 0.68 1.18 3/83 37"``).

    The runnable count includes the reading process itself.

    Raises:
        ValueError: not the format of /proc/loadavg.
    """
    fields = text.split()
    return float(fields[0]), int(fields[3].split("/")[0])


def parse_busy_ticks(stat_text: str, cpus: set[int]) -> int:
    """Clock ticks the CPUs ``cpus`` spent busy (all but idle and iowait), from ``/proc/stat`` text.

    Busy is user, nice, system, irq, softirq and steal (a hypervisor's steal is time we cannot have
    either); guest time is already part of user.
    """
    busy = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if int(name[3:]) not in cpus:
            continue
        fields = [int(value) for value in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy += user + nice + system + irq + softirq + steal
    return busy


@dataclass(frozen=True)
class CpuSample:
    """One reading: monotonic seconds, this process's CPU seconds, busy ticks of our CPUs."""

    wall: float
    own_cpu: float
    busy_ticks: int


def other_busy_cpus(start: CpuSample, end: CpuSample, ticks_per_second: float) -> float:
    """CPUs that other processes kept busy between two readings (ours subtracted), at least 0."""
    wall = end.wall - start.wall
    if wall <= 0:
        return 0.0
    busy = (end.busy_ticks - start.busy_ticks) / ticks_per_second - (end.own_cpu - start.own_cpu)
    return max(0.0, busy / wall)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def sample_cpu(cpus: set[int], stat_path: Path = _PROC_STAT) -> CpuSample | None:
    """A reading of ``/proc/stat`` for ``cpus`` (None where there is no /proc/stat)."""
    text = _read(stat_path)
    if text is None:
        return None
    return CpuSample(time.monotonic(), _own_cpu_seconds(), parse_busy_ticks(text, cpus))


@dataclass(frozen=True)
class Load:
    """How busy the machine is for this process: CPUs busy with other work, and how that was seen."""

    other_cpus: float
    how: str


def measure_other_load(
    cpus: set[int],
    *,
    loadavg_path: Path = _PROC_LOADAVG,
    stat_path: Path = _PROC_STAT,
    sleep: Callable[[float], None] = time.sleep,
) -> Load:
    """CPUs of ``cpus`` that other processes keep busy now (see the module docstring for the sources)."""
    text = _read(loadavg_path)
    try:
        average, runnable = parse_loadavg(text) if text else (None, None)
    except (ValueError, IndexError):
        average, runnable = None, None
    if average is not None and runnable is not None and runnable <= 1 and average < QUIET_LOAD_AVERAGE:
        return Load(0.0, f"quiet: nothing else runnable, load average {average:.2f}")
    start = sample_cpu(cpus, stat_path)
    if start is None:
        # No /proc/stat (not Linux): the runnable count, ourselves excluded, is all there is.
        others = float(max(0, (runnable or 1) - 1))
        return Load(others, f"{runnable} runnable task(s) now" if runnable else "load unknown")
    sleep(LOAD_SAMPLE_SECONDS)
    end = sample_cpu(cpus, stat_path)
    ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    others = other_busy_cpus(start, end, ticks) if end is not None else 0.0
    return Load(others, f"other processes kept {others:.1f} CPU(s) busy over {LOAD_SAMPLE_SECONDS:g} s")


# ----------------------------------------------------------------------------- the choice
def choose_threads(cpus: int, quota: float | None, other_busy: float, processes: int = 1) -> int:
    """Threads for ``--threads auto``: the CPUs we may use that others leave free, at least 1.

    Args:
        cpus: CPUs in this process's affinity set.
        quota: cgroup CPU quota in CPUs (None: none); rounded down.
        other_busy: CPUs of the affinity set kept busy by other processes (see
            :func:`measure_other_load`); rounded to the nearest CPU, so that background noise of a
            few tenths of a CPU does not cost a thread.
        processes: processes of this job sharing these CPUs (torchrun's ``LOCAL_WORLD_SIZE``): each
            takes its share.

    Example:
        >>> choose_threads(cpus=8, quota=None, other_busy=0.2)
        8
        >>> choose_threads(cpus=2, quota=None, other_busy=2.0)   # another job on both cores
        1
        >>> choose_threads(cpus=16, quota=3.5, other_busy=0.0)  # a container with --cpus 3.5
        3
    """
    free = math.floor(cpus - other_busy + 0.5)
    share = max(1, cpus // max(1, processes))
    return max(1, min(allowed_threads(cpus, quota), free, share))


def _env_threads(environ: Mapping[str, str], name: str = "OMP_NUM_THREADS") -> int | None:
    """A positive thread count set in ``environ[name]`` (the first of a nested list ``"4,2"``)."""
    text = environ.get(name, "").split(",")[0].strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def decide_auto(
    environ: Mapping[str, str] = os.environ,
    *,
    cpus: set[int] | None = None,
    read_quota: Callable[[], float | None] = cgroup_cpu_quota,
    read_load: Callable[[set[int]], Load] = measure_other_load,
) -> ThreadChoice:
    """Resolves ``--threads auto`` for this process; changes nothing (:func:`apply_auto` does).

    An ``OMP_NUM_THREADS`` in ``environ`` wins (torch reads it too); otherwise
    :func:`choose_threads` on the affinity set (``cpus``), the quota and the load (the readers are
    parameters for tests).
    """
    for name in THREAD_COUNT_VARIABLES:
        user_threads = _env_threads(environ, name)
        if user_threads is not None:
            return ThreadChoice(min(user_threads, MAX_THREADS), f"auto: {name} from the environment", {})
    cpus = affinity_cpus() if cpus is None else cpus
    quota = read_quota()
    load = read_load(cpus)
    processes = _env_threads(environ, "LOCAL_WORLD_SIZE") or 1
    threads = choose_threads(len(cpus), quota, load.other_cpus, processes)
    limits = f"{len(cpus)} CPU(s) in the affinity set"
    limits += f", CPU quota {quota:g}" if quota is not None else ", no CPU quota"
    if processes > 1:
        limits += f", shared by {processes} local processes"
    return ThreadChoice(
        threads, f"auto: {limits}; {load.how}", {"OMP_NUM_THREADS": str(threads)}, adaptive=True
    )


# The variables apply_auto set in this process's environment (not the user's: see
# torchrun_threads_environment).
_set_by_auto: dict[str, str] = {}


def apply_auto(choice: ThreadChoice, environ: MutableMapping[str, str] = os.environ) -> ThreadChoice:
    """Applies an ``auto`` choice and returns it as applied.

    Our loops' threads are set at once; torch's go through the environment (``OMP_NUM_THREADS`` and
    the wait variables), which libgomp and torch read when torch is first imported. Where torch is
    already loaded (the library used in-process, tests) the wait variables would come too late: the
    torch thread count is set directly and the environment is left alone.
    """
    set_worker_threads(choice.threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)
        return ThreadChoice(choice.threads, choice.reason + "; torch already loaded", {})
    environ.update(choice.environment)
    if environ is os.environ:
        _set_by_auto.update(choice.environment)
        if choice.adaptive:
            start_governor(choice.threads)
    return choice


def apply_fixed(threads: int) -> ThreadChoice:
    """``--threads N``: torch and our loops use N threads, as this option always did."""
    # lazy: importing torch costs about 2 s (python -X importtime); only an explicit N pays it here.
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    set_worker_threads(threads)
    stop_governor()
    return ThreadChoice(threads, "--threads", {})


def torchrun_threads_environment(
    nproc_per_node: int, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for ``nproc_per_node`` torchrun children: each its share of our CPUs.

    Without it torchrun gives each child 1 thread. Empty when the user set ``OMP_NUM_THREADS`` (theirs
    is passed on); a value ``auto`` set in this process is this process's count, not a child's, and
    is replaced by the share.
    """
    value = environ.get("OMP_NUM_THREADS")
    if value is not None and value != _set_by_auto.get("OMP_NUM_THREADS"):
        return {}
    share = max(1, allowed_threads(len(affinity_cpus()), cgroup_cpu_quota()) // max(1, nproc_per_node))
    return {"OMP_NUM_THREADS": str(share)}


# ----------------------------------------------------------------------------- while the job runs
# Seconds between two load readings of the governor: long enough that one reading is cheap against
# the work between them (reading /proc/stat takes about 50 us) and that a short burst of another
# job does not move our count; short enough that a job joining the machine costs us a few seconds
# of oversubscription, not a whole run.
ADJUST_SECONDS = 3.0


class ThreadGovernor:
    """Keeps ``auto``'s torch thread count at the CPUs other processes leave free, while a job runs.

    A start-up decision cannot see a job that starts after it: two trainings started one after the
    other on 2 cores would each keep 2 threads and slow each other down many times over (measured:
    ``benchmarks/bench_threads.py``). So the loops that run long (training steps, conversion slabs)
    call :func:`adjust_threads` between their steps; every :data:`ADJUST_SECONDS` it measures, over
    the window since the last reading, the CPUs others kept busy (:func:`other_busy_cpus`, our own
    CPU time subtracted) and sets torch's thread count to :func:`choose_threads` of that. Two
    governed jobs on 2 cores settle at one thread each, and the one left alone goes back to both.

    Only between steps, on the calling thread: torch's thread count must not change inside a
    parallel region. The count changes the order of float sums, so a governed run is not
    bit-reproducible against another run: ``--threads N`` (never governed) is.

    Example:
        >>> samples = iter([CpuSample(0.0, 0.0, 0), CpuSample(3.0, 3.0, 600)])  # others: 1 CPU busy
        >>> counts = []
        >>> governor = ThreadGovernor({0, 1}, None, 2, sample=lambda: next(samples),
        ...                           clock=iter([0.0, 3.0]).__next__, set_threads=counts.append)
        >>> governor.adjust(), counts
        (1, [1])
    """

    def __init__(
        self,
        cpus: set[int],
        quota: float | None,
        threads: int,
        *,
        processes: int = 1,
        interval: float = ADJUST_SECONDS,
        sample: Callable[[], CpuSample | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        set_threads: Callable[[int], None] | None = None,
        ticks_per_second: float | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        if interval <= 0:
            raise ValueError(f"interval must be > 0; got {interval}")
        self.cpus = set(cpus)
        self.quota = quota
        self.threads = threads
        self.processes = processes
        self.interval = interval
        self._sample = sample if sample is not None else (lambda: sample_cpu(self.cpus))
        self._clock = clock
        self._set_threads = set_threads if set_threads is not None else _set_torch_and_loop_threads
        self._ticks = ticks_per_second or (
            float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        )
        self._last = self._sample()
        self._next = clock() + interval

    def __repr__(self) -> str:
        return (
            f"ThreadGovernor(cpus={len(self.cpus)}, quota={self.quota}, threads={self.threads}, "
            f"interval={self.interval:g} s)"
        )

    def adjust(self) -> int | None:
        """Re-reads the load when :attr:`interval` has passed; the new count when it changed, else None."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.interval
        current = self._sample()
        previous, self._last = self._last, current
        if previous is None or current is None:
            return None
        others = other_busy_cpus(previous, current, self._ticks)
        threads = choose_threads(len(self.cpus), self.quota, others, self.processes)
        if threads == self.threads:
            return None
        logger.debug(
            "threads: %d -> %d (auto: other processes kept %.1f CPU(s) busy over %.1f s)",
            self.threads,
            threads,
            others,
            current.wall - previous.wall,
        )
        self.threads = threads
        self._set_threads(threads)
        return threads


def _set_torch_and_loop_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    set_worker_threads(threads)


_governor: ThreadGovernor | None = None


def start_governor(threads: int, environ: Mapping[str, str] = os.environ) -> ThreadGovernor:
    """Makes :func:`adjust_threads` follow the load from now on, starting at ``threads``."""
    global _governor
    cpus = affinity_cpus()
    processes = _env_threads(environ, "LOCAL_WORLD_SIZE") or 1
    _governor = ThreadGovernor(cpus, cgroup_cpu_quota(), threads, processes=processes)
    return _governor


def stop_governor() -> None:
    """:func:`adjust_threads` does nothing again (``--threads N``, tests)."""
    global _governor
    _governor = None


def adjust_threads() -> int | None:
    """Called between the steps of long loops: the governor's :meth:`ThreadGovernor.adjust`, if
    ``--threads auto`` started one in this process (else nothing, at the cost of one call)."""
    return None if _governor is None else _governor.adjust()

"""``--threads auto|N``: the choice from affinity, quota and load (fake /proc and cgroup files), the
OpenMP environment and its precedence, and the CLI option (``medcyclegan.runtime.threads``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import one_error_line

from medcyclegan import parallel
from medcyclegan.errors import ConfigError
from medcyclegan.runtime import threads as threads_module
from medcyclegan.runtime.threads import (
    MAX_THREADS,
    WAIT_VARIABLES,
    CpuSample,
    Load,
    ThreadChoice,
    ThreadGovernor,
    adjust_threads,
    apply_auto,
    cgroup_cpu_quota,
    choose_threads,
    decide_auto,
    measure_other_load,
    other_busy_cpus,
    parse_busy_ticks,
    parse_cfs_quota,
    parse_cpu_max,
    parse_loadavg,
    parse_threads,
    stop_governor,
    torchrun_threads_environment,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the choice
@pytest.mark.parametrize(
    ("cpus", "quota", "busy", "processes", "expected"),
    [
        (8, None, 0.0, 1, 8),  # a quiet machine: every CPU
        (8, None, 0.3, 1, 8),  # background noise does not cost a thread
        (2, None, 2.0, 1, 1),  # another job on both cores: one thread, never zero
        (2, None, 5.0, 1, 1),  # more busy than there are CPUs
        (4, None, 1.4, 1, 3),  # rounded to the nearest CPU
        (4, None, 1.6, 1, 2),
        (16, 3.5, 0.0, 1, 3),  # a container's --cpus 3.5: rounded down
        (16, 0.5, 0.0, 1, 1),  # a quota below one CPU still gets one thread
        (8, None, 0.0, 3, 2),  # three torchrun processes share the CPUs
        (8, 2.0, 7.0, 1, 1),  # quota and load together: the smaller wins
    ],
)
def test_choose_threads(cpus: int, quota: float | None, busy: float, processes: int, expected: int) -> None:
    assert choose_threads(cpus, quota, busy, processes) == expected


def test_cgroup_quota_files_are_parsed() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("250000 100000\n") == 2.5
    assert parse_cpu_max("garbage") is None
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("150000\n", "100000\n") == 1.5
    assert parse_cfs_quota("", "100000") is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_over_the_group_and_its_parents(tmp_path: Path) -> None:
    root, self_cgroup = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "jobs" / "cpu.max", "200000 100000\n")
    _write(root / "jobs" / "me" / "cpu.max", "300000 100000\n")
    _write(self_cgroup, "0::/jobs/me\n")
    assert cgroup_cpu_quota(root, self_cgroup) == 2.0
    # A cgroup namespace (a container): the group path does not exist here; the root is ours.
    _write(self_cgroup, "0::/elsewhere/me\n")
    _write(root / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(root, self_cgroup) == 1.5
    _write(root / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, self_cgroup) is None


def test_cgroup_v1_quota_and_no_cgroup_at_all(tmp_path: Path) -> None:
    root, self_cgroup = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "box" / "cpu.cfs_quota_us", "50000\n")
    _write(root / "cpu,cpuacct" / "box" / "cpu.cfs_period_us", "100000\n")
    _write(self_cgroup, "4:memory:/box\n3:cpu,cpuacct:/box\n0::/\n")
    assert cgroup_cpu_quota(root, self_cgroup) == 0.5
    _write(self_cgroup, "3:cpu,cpuacct:/\n")
    assert cgroup_cpu_quota(root, self_cgroup) is None
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "none_either") is None


# ----------------------------------------------------------------------------- the load
_STAT = """cpu  300 0 30 900 10 0 0 0 0 0
cpu0 100 0 10 500 5 0 0 0 0 0
cpu1 200 5 20 400 5 1 2 3 0 0
intr 12345
ctxt 999
"""


def test_busy_ticks_count_only_our_cpus_and_not_idle_or_iowait() -> None:
    assert parse_busy_ticks(_STAT, {0}) == 110
    assert parse_busy_ticks(_STAT, {1}) == 200 + 5 + 20 + 1 + 2 + 3
    assert parse_busy_ticks(_STAT, {0, 1}) == 110 + 231
    assert parse_busy_ticks(_STAT, {7}) == 0
    assert parse_loadavg("0.46 0.68 1.18 3/83 3779\n") == (0.46, 3)


def test_other_busy_cpus_subtracts_our_own_cpu_time() -> None:
    start = threads_module.CpuSample(wall=10.0, own_cpu=1.0, busy_ticks=1000)
    end = threads_module.CpuSample(wall=11.0, own_cpu=1.5, busy_ticks=1150)  # 1.5 CPU-s, 0.5 ours
    assert other_busy_cpus(start, end, ticks_per_second=100) == pytest.approx(1.0)
    assert other_busy_cpus(start, start, ticks_per_second=100) == 0.0
    idle = threads_module.CpuSample(wall=11.0, own_cpu=1.5, busy_ticks=1010)
    assert other_busy_cpus(start, idle, ticks_per_second=100) == 0.0  # never below zero


def test_a_quiet_machine_is_seen_from_loadavg_without_sampling(tmp_path: Path) -> None:
    _write(tmp_path / "loadavg", "0.10 0.20 0.30 1/100 5\n")

    def no_sleep(_seconds: float) -> None:
        raise AssertionError("a quiet machine must not cost a /proc/stat sample")

    load = measure_other_load(
        {0, 1}, loadavg_path=tmp_path / "loadavg", stat_path=tmp_path / "no", sleep=no_sleep
    )
    assert load.other_cpus == 0.0 and "quiet" in load.how


@pytest.mark.parametrize("loadavg", ["0.10 0.20 0.30 3/100 5\n", "1.90 0.20 0.30 1/100 5\n"])
def test_a_busy_machine_is_measured_on_proc_stat(tmp_path: Path, loadavg: str) -> None:
    """Other runnable tasks now, or a high load average: two /proc/stat readings decide."""
    _write(tmp_path / "loadavg", loadavg)
    stat = tmp_path / "stat"
    _write(stat, "cpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n")
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = threads_module.LOAD_SAMPLE_SECONDS

    def sleep(duration: float) -> None:
        time.sleep(duration)  # both CPUs fully busy with other work meanwhile
        busy = round(ticks * seconds)
        _write(stat, f"cpu0 {busy} 0 0 0 0 0 0 0 0 0\ncpu1 {busy} 0 0 0 0 0 0 0 0 0\n")

    load = measure_other_load({0, 1}, loadavg_path=tmp_path / "loadavg", stat_path=stat, sleep=sleep)
    assert 1.5 < load.other_cpus <= 2.0, load
    assert "busy over" in load.how
    # Only cpu1 is ours: one CPU busy.
    _write(stat, "cpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n")
    load = measure_other_load({1}, loadavg_path=tmp_path / "loadavg", stat_path=stat, sleep=sleep)
    assert 0.7 < load.other_cpus <= 1.0, load


# ----------------------------------------------------------------------------- environment
def test_auto_sets_no_openmp_wait_variable() -> None:
    """The governor handles contention; a short spin cost a process alone up to a quarter of its speed."""
    choice = decide_auto({}, cpus={0, 1}, read_quota=lambda: None, read_load=_fake_load(0.0))
    assert not set(choice.environment) & set(WAIT_VARIABLES)


def _fake_load(busy: float):
    return lambda _cpus: Load(busy, f"{busy} busy (fake)")


def test_decide_auto_from_affinity_quota_and_load() -> None:
    choice = decide_auto({}, cpus={0, 1, 2, 3}, read_quota=lambda: None, read_load=_fake_load(1.0))
    assert choice.threads == 3
    assert choice.environment == {"OMP_NUM_THREADS": "3"} and choice.adaptive
    assert "4 CPU(s)" in choice.reason and "no CPU quota" in choice.reason and "fake" in choice.reason
    quota = decide_auto({}, cpus={0, 1, 2, 3}, read_quota=lambda: 2.5, read_load=_fake_load(0.0))
    assert quota.threads == 2 and "CPU quota 2.5" in quota.reason
    shared = decide_auto(
        {"LOCAL_WORLD_SIZE": "4"}, cpus=set(range(8)), read_quota=lambda: None, read_load=_fake_load(0)
    )
    assert shared.threads == 2 and "4 local processes" in shared.reason


def test_the_users_environment_wins_over_auto() -> None:
    def unused(*_args: object) -> None:
        raise AssertionError("OMP_NUM_THREADS set: nothing is measured")

    choice = decide_auto(
        {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}, cpus={0}, read_quota=unused, read_load=unused
    )
    assert choice.threads == 3 and "OMP_NUM_THREADS" in choice.reason
    assert choice.environment == {}  # neither the count nor any wait variable is overridden
    environ: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
    applied = _apply_without_torch(
        decide_auto(environ, cpus={0, 1}, read_quota=lambda: None, read_load=_fake_load(0)), environ
    )
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    assert applied.describe().endswith("following the load")  # the user's wait policy is kept


def _apply_without_torch(choice: ThreadChoice, environ: dict[str, str]) -> ThreadChoice:
    """apply_auto as in a fresh process (torch not loaded yet), on a private environment."""
    saved = sys.modules.pop("torch")
    try:
        return apply_auto(choice, environ)
    finally:
        sys.modules["torch"] = saved
        parallel.set_worker_threads(None)


def test_apply_auto_with_torch_loaded_sets_torch_and_leaves_the_environment() -> None:
    before = torch.get_num_threads()
    environ: dict[str, str] = {}
    try:
        choice = decide_auto({}, cpus={0}, read_quota=lambda: None, read_load=_fake_load(0))
        applied = apply_auto(choice, environ)
        assert torch.get_num_threads() == 1 and parallel.worker_threads() == 1
        assert environ == {} and applied.environment == {}
        assert "torch already loaded" in applied.describe()
    finally:
        torch.set_num_threads(before)
        parallel.set_worker_threads(None)


def test_torchrun_children_get_a_share_unless_the_user_set_omp_num_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads_module, "affinity_cpus", lambda: set(range(8)))
    monkeypatch.setattr(threads_module, "cgroup_cpu_quota", lambda: None)
    assert torchrun_threads_environment(4, {}) == {"OMP_NUM_THREADS": "2"}
    assert torchrun_threads_environment(16, {}) == {"OMP_NUM_THREADS": "1"}
    assert torchrun_threads_environment(4, {"OMP_NUM_THREADS": "3"}) == {}


# ----------------------------------------------------------------------------- the option
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "--threads must be >= 1; got 0"),
        ("-2", "--threads must be >= 1; got -2"),
        ("x", "--threads must be auto or an integer >= 1; got 'x'"),
        ("2.5", "--threads must be auto or an integer >= 1; got '2.5'"),
        (str(MAX_THREADS + 1), f"--threads must be at most {MAX_THREADS}"),
    ],
)
def test_bad_threads_values_are_one_line_and_exit_2(cli, text: str, message: str) -> None:
    with pytest.raises(ConfigError):
        parse_threads(text)
    assert message in one_error_line(cli("--threads", text, "sample-data", "--help"))


def test_threads_n_sets_torch_and_our_loops_exactly(cli) -> None:
    before = torch.get_num_threads()
    waits_before = {name: os.environ.get(name) for name in WAIT_VARIABLES}
    try:
        result = cli("--threads", "3", "sample-data", "--help")
        assert result.code == 0, result.err
        assert torch.get_num_threads() == 3 and parallel.worker_threads() == 3
        # As before auto existed: no OpenMP variable is set.
        assert {name: os.environ.get(name) for name in WAIT_VARIABLES} == waits_before
    finally:
        torch.set_num_threads(before)


def test_threads_auto_is_accepted_and_said_in_verbose(cli) -> None:
    for args in (("--threads", "auto"), ("--threads", "AUTO"), ()):
        result = cli("-v", *args, "sample-data", "--help")
        assert result.code == 0, result.err
        assert "threads: " in result.err and "auto: OMP_NUM_THREADS" in result.err, result.err


_FRESH_PROCESS = """
import os, sys
from medcyclegan.cli import main
sys.argv = ["medcyclegan", "-v", *sys.argv[1:], "sample-data", "--help"]
try:
    main()
except SystemExit:
    pass
loaded_before = "torch" in sys.modules
import torch
print("RESULT", loaded_before, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
      os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"))
"""


def _fresh(args: list[str], **environment: str) -> tuple[list[str], str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY")
    }
    env.update(environment, PYTHONPATH=str(REPO), COLUMNS="1000")
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return line.split()[1:], done.stderr


def test_in_a_fresh_process_auto_sets_the_environment_torch_reads_and_the_user_wins() -> None:
    """Through the real entry point: the variables are set before torch is first imported."""
    (loaded, torch_threads, omp, spin, policy), err = _fresh([])
    assert loaded == "False"  # the root callback ran before anything imported torch
    assert torch_threads == omp and int(omp) >= 1
    assert spin == "None" and policy == "None"
    assert f"threads: {omp} (auto:" in err and "following the load" in err
    (loaded, torch_threads, omp, spin, policy), err = _fresh(
        [], OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"
    )
    assert (torch_threads, omp, spin, policy) == ("1", "1", "None", "PASSIVE")
    assert "OMP_NUM_THREADS from the environment" in err


def test_the_torchrun_relaunch_passes_each_process_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcyclegan.runtime import distributed

    for name in ("WORLD_SIZE", "RANK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads_module, "affinity_cpus", lambda: set(range(6)))
    monkeypatch.setattr(threads_module, "cgroup_cpu_quota", lambda: None)
    environments: list[dict[str, str]] = []

    class FakeProcess:
        def __init__(self, _command: list[str], *, env: dict[str, str], **_kwargs: object) -> None:
            environments.append(env)

        def wait(self) -> int:
            return 0

        def send_signal(self, _signum: int) -> None:
            pass

    monkeypatch.setattr(distributed.subprocess, "Popen", FakeProcess)
    assert distributed.launch_with_torchrun(["train", "-o", "x"], 2, require_gpus=False) == 0
    assert environments[0]["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    distributed.launch_with_torchrun(["train", "-o", "x"], 2, require_gpus=False)
    assert environments[1]["OMP_NUM_THREADS"] == "5"


# ----------------------------------------------------------------------------- the governor
def _governor(samples: list[CpuSample], times: list[float], threads: int = 2, cpus: int = 2):
    counts: list[int] = []
    readings = iter(samples)
    clock = iter(times)
    governor = ThreadGovernor(
        set(range(cpus)),
        None,
        threads,
        interval=3.0,
        sample=lambda: next(readings),
        clock=clock.__next__,
        set_threads=counts.append,
        ticks_per_second=100.0,
    )
    return governor, counts


def test_the_governor_follows_the_load_between_steps() -> None:
    """Another job takes a core: down to 1 thread; it leaves: back to 2. Readings at most every 3 s."""
    samples = [
        CpuSample(0.0, 0.0, 0),  # at start
        CpuSample(3.0, 3.0, 600),  # 3 s: we used 3 CPU-s of 6 busy: others kept 1 CPU busy
        CpuSample(6.0, 6.0, 1200),  # the same: no change
        CpuSample(9.0, 12.0, 1800),  # others idle (all busy time is ours): back to 2
    ]
    governor, counts = _governor(samples, [0.0, 1.0, 3.0, 6.0, 9.0])
    assert governor.adjust() is None and counts == []  # 1 s: too early to read
    assert governor.adjust() == 1 and counts == [1]
    assert governor.adjust() is None and governor.threads == 1
    assert governor.adjust() == 2 and counts == [1, 2]
    assert "threads=2" in repr(governor)


def test_the_governor_never_goes_below_one_thread_or_above_the_cpus() -> None:
    samples = [CpuSample(0.0, 0.0, 0), CpuSample(3.0, 0.0, 2400), CpuSample(6.0, 0.0, 2400)]
    governor, counts = _governor(samples, [0.0, 3.0, 6.0], threads=4, cpus=4)
    assert governor.adjust() == 1  # others kept all 4 CPUs (8 CPU-s of 12) busy
    assert governor.adjust() == 4 and counts == [1, 4]  # nothing busy in the next window


def test_the_governor_sets_torch_and_our_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_threads", parallel._threads)
    before = torch.get_num_threads()
    samples = iter([CpuSample(0.0, 0.0, 0), CpuSample(3.0, 0.0, 600)])
    governor = ThreadGovernor(
        {0, 1}, None, 2, sample=lambda: next(samples), clock=iter([0.0, 3.0]).__next__, ticks_per_second=100.0
    )
    try:
        assert governor.adjust() == 1  # others kept 2 CPUs busy
        assert torch.get_num_threads() == 1 and parallel.worker_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_adjust_threads_runs_only_the_governor_auto_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "_governor", None)
    assert adjust_threads() is None
    calls: list[int] = []
    monkeypatch.setattr(
        threads_module, "_governor", type("G", (), {"adjust": lambda self: calls.append(1) or 3})()
    )
    assert adjust_threads() == 3 and calls == [1]
    stop_governor()
    assert adjust_threads() is None


def test_auto_starts_a_governor_only_from_the_load_in_a_fresh_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads_module, "_governor", None)
    monkeypatch.setattr(threads_module, "start_governor", lambda threads: calls.append(threads))
    calls: list[int] = []
    environ: dict[str, str] = {}
    monkeypatch.delitem(sys.modules, "torch")  # as in the CLI's root callback, before torch loads
    monkeypatch.setattr(threads_module, "set_worker_threads", lambda n: None)
    measured = ThreadChoice(2, "auto: ...", {"OMP_NUM_THREADS": "2"}, adaptive=True)
    apply_auto(measured, environ)  # not os.environ: a test's own mapping starts nothing
    assert calls == [] and environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setattr(threads_module.os, "environ", environ)
    threads_module.apply_auto(measured, environ)
    assert calls == [2]
    threads_module.apply_auto(ThreadChoice(1, "auto: OMP_NUM_THREADS from the environment", {}), environ)
    assert calls == [2]  # the user's count is kept as it is

"""Multi-process training on the CPU (gloo): sharding, DDP weight agreement, rank-0 checkpoints, resume.

The two-process test starts both ranks once (torch.multiprocessing, forked) and runs three trainings
in them: straight through, stopped early, and resumed; the torchrun test drives the real command line.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.distributed as dist
from tiny import TINY_RUN, TrainedRun, free_port, join_process_group, write_domain, write_domains

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.convert import convert_paths, load_model
from medcyclegan.errors import CheckpointError, ConfigError, OutputError
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext, shard, strip_option, torchrun_command
from medcyclegan.train import trainer as trainer_module
from medcyclegan.train.schedule import epoch_batches
from medcyclegan.train.trainer import Trainer

NETS = ("G_AB", "G_BA", "D_A", "D_B")
REPO_ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS, STOP_STEP = 6, 3  # 2 steps per epoch: the resume starts in the middle of epoch 1


# tiny.TINY_RUN in 2-step epochs with a pool of 3 (the pool sizes are checked).
DISTRIBUTED_RUN = {
    **TINY_RUN,
    "optim.pool_size": 3,
    "train.steps_per_epoch": 2,
}


def _torchrun_env() -> dict[str, str]:
    """This environment with one thread per process and this checkout first on the import path.

    The processes torchrun starts run ``-m medcyclegan``: they must import the tree under test, not
    another installed copy.
    """
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}


def _flat_weights(trainer) -> torch.Tensor:
    return torch.cat(
        [p.detach().reshape(-1) for name in NETS for p in getattr(trainer.model, name).parameters()]
    )


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank: a straight run, a run stopped early, and its resumption; writes a JSON report."""
    join_process_group(rank, world_size, port)

    writes: list[str] = []
    original_save = trainer_module.save_checkpoint

    def counting_save(payload, path):
        writes.append(Path(path).name)
        return original_save(payload, path)

    trainer_module.save_checkpoint = counting_save
    base = Path(root)
    mr, ct = sorted((base / "mr").glob("*.nii.gz")), sorted((base / "ct").glob("*.nii.gz"))

    def run(folder: str, max_steps: int, resume: bool = False):
        cfg = load_config(None, {**DISTRIBUTED_RUN, "train.max_steps": max_steps})
        trainer = Trainer(
            cfg,
            base / folder,
            mr,
            ct,
            resume=base / folder if resume else None,
            show_progress=False,
        )
        result = trainer.fit()
        return trainer, result

    straight, result = run("straight", TOTAL_STEPS)
    weights = _flat_weights(straight)
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    dist.all_gather(gathered, weights)
    run("resumed", STOP_STEP)
    _, resumed_result = run("resumed", TOTAL_STEPS, resume=True)
    report = {
        "step": result.step,
        "resumed_step": resumed_result.step,
        "steps_per_epoch": straight.steps_per_epoch,
        "same_weights_on_all_ranks": all(torch.equal(gathered[0], w) for w in gathered),
        "checkpoint_writes": writes,
        "pool_sizes": [len(straight.model.pool_A), len(straight.model.pool_B)],
        "lr": straight.model.opt_G.param_groups[0]["lr"],
    }
    (base / f"report{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_domains(root)  # root/mr, root/ct: the workers' data beside their runs
    # Forked, as DataLoader workers are: the ranks start with this process's imports (torch, monai and
    # medcyclegan: seconds of start-up each with spawn) and no state a rank could share (CPU only).
    torch.multiprocessing.start_processes(
        _worker, args=(2, free_port(), str(root)), nprocs=2, join=True, start_method="fork"
    )
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(path)
    return {f"{net}.{k}": v for net in NETS for k, v in data[net].items()}


# ------------------------------------------------------------------------------ two processes
def test_ranks_agree_and_only_rank0_writes(two_rank_run: Path) -> None:
    reports = [json.loads((two_rank_run / f"report{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["step"] == TOTAL_STEPS and report["resumed_step"] == TOTAL_STEPS
        assert report["same_weights_on_all_ranks"]  # different data per rank, so DDP averaged the gradients
        assert report["pool_sizes"] == [3, 3]
    assert reports[0]["lr"] == reports[1]["lr"]
    assert reports[0]["steps_per_epoch"] == reports[1]["steps_per_epoch"] == 2
    assert reports[1]["checkpoint_writes"] == []
    # Straight run: 3 epochs x (epoch_XXXX + last) + final last; stopped run: epoch 1 (2) + final last;
    # resumed run: epochs 2 and 3 (2 each) + final last.
    assert len(reports[0]["checkpoint_writes"]) == 7 + 3 + 5
    data = load_checkpoint(two_rank_run / "straight" / "checkpoints" / "last.pt")
    assert data["world_size"] == 2 and data["step"] == TOTAL_STEPS
    assert len(data["pools"]["A"]) == 2 and len(data["pools"]["B"]) == 2
    with open(two_rank_run / "straight" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, TOTAL_STEPS + 1))  # one row per step, written once
    # The learning rate follows global epochs: 2 constant, then linear decay.
    assert [float(r["lr"]) for r in rows] == pytest.approx([2e-4] * 4 + [1e-4] * 2)
    assert not list((two_rank_run / "straight" / "checkpoints").glob(".*tmp*"))


def test_two_rank_resume_is_exact(two_rank_run: Path) -> None:
    a = _weights(two_rank_run / "straight" / "checkpoints" / "last.pt")
    b = _weights(two_rank_run / "resumed" / "checkpoints" / "last.pt")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_checkpoint_of_two_ranks_refuses_a_single_process_resume(two_rank_run: Path, tmp_path: Path) -> None:
    mr, ct = sorted((two_rank_run / "mr").glob("*")), sorted((two_rank_run / "ct").glob("*"))
    cfg = load_config(None, {**DISTRIBUTED_RUN, "train.max_steps": TOTAL_STEPS + 2})
    with pytest.raises(CheckpointError, match="2 process"):
        Trainer(cfg, tmp_path, mr, ct, resume=two_rank_run / "straight", show_progress=False)


# ------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_torchrun_runs_the_cli_on_two_processes(trained_run: TrainedRun, tmp_path: Path) -> None:
    mr, ct = trained_run.mr, trained_run.ct
    out = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in {**DISTRIBUTED_RUN, "train.max_steps": 2}.items()]
    command = torchrun_command(["train", "--src", str(mr), "--tgt", str(ct), "-o", str(out), *sets], 2)
    done = subprocess.run(command, capture_output=True, text=True, env=_torchrun_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = load_checkpoint(out / "checkpoints" / "last.pt")
    assert data["world_size"] == 2 and data["step"] == 2


# ------------------------------------------------------------------------------ helpers
def test_shard_splits_every_item_exactly_once() -> None:
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(i for part in parts for i in part) == items
    assert [len(p) for p in parts] == [4, 4, 3]
    assert parts[1] == [1, 4, 7, 10]
    assert shard(items, 0, 1) == items
    for rank, world in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            shard(items, rank, world)


def test_sharded_epoch_batches_keep_the_global_order() -> None:
    """Global step s = batches s*W .. s*W+W-1 of one list; with W = 1 it is the single-process list."""
    world, steps = 2, 5
    batches = epoch_batches(9, 2, steps * world, seed=3, epoch=1, domain=0)
    per_rank = [shard(batches, r, world) for r in range(world)]
    for step in range(steps):
        assert [per_rank[r][step] for r in range(world)] == batches[step * world : (step + 1) * world]
    assert shard(epoch_batches(9, 2, steps, 3, 1, 0), 0, 1) == epoch_batches(9, 2, steps, 3, 1, 0)


def test_detect_reads_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.detect() == DistributedContext(0, 1, 0)
    assert not distributed.in_torchrun()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = distributed.detect()
    assert (context.rank, context.world_size, context.local_rank) == (3, 4, 1)
    assert context.is_distributed and not context.is_main and distributed.in_torchrun()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4"):
        distributed.detect()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK"):
        distributed.detect()


def test_torchrun_command_drops_gpus_and_keeps_the_rest() -> None:
    argv = ["-v", "train", "--gpus", "4", "--src", "a b", "--gpus=4", "--compile"]
    assert strip_option(argv, "--gpus") == ["-v", "train", "--src", "a b", "--compile"]
    command = torchrun_command(argv, 4, python="py")
    assert command[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m"]
    assert command[7:] == ["medcyclegan", "-v", "train", "--src", "a b", "--compile"]
    with pytest.raises(ConfigError):
        torchrun_command(argv, 0)


def test_launch_refuses_missing_gpus_and_nested_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="more GPUs"):
        distributed.launch_with_torchrun(["train"], 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="inside torchrun"):
        distributed.launch_with_torchrun(["train"], 2)


def test_launch_runs_torchrun_and_returns_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relaunch passes the command line through (checked with a stand-in for torchrun)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    seen: list[list[str]] = []

    class FakeProcess:
        def __init__(self, command, **_kwargs):
            seen.append(command)

        def wait(self) -> int:
            return 7

        def send_signal(self, _signum: int) -> None:
            pass

    monkeypatch.setattr(distributed.subprocess, "Popen", FakeProcess)
    status = distributed.launch_with_torchrun(["train", "--gpus", "2", "-o", "x"], 2, require_gpus=False)
    assert status == 7
    assert seen[0][-4:] == ["medcyclegan", "train", "-o", "x"] and seen[0][0] == sys.executable


# ------------------------------------------------------------------------------ sharded convert
@pytest.fixture(scope="module")
def convert_world(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's tiny trained run, a folder of 3 MR volumes and their single-process conversions."""
    root = tmp_path_factory.mktemp("convert_shard")
    scans = write_domain(root / "scans", "mr", 3, 7)
    convert_paths(load_model(trained_run.run, device="cpu"), scans, root / "single")
    return {"run": trained_run.run, "scans": scans, "single": root / "single"}


def _same_outputs(folder: Path, reference: Path, max_hu_difference: int = 0) -> None:
    """The same file names with the same voxels: bit-identical, or within ``max_hu_difference`` HU.

    Bit-identical is promised only for the same thread count on the same machine; another thread
    count (or CPU) changes the order of the convolutions' sums, and a voxel near .5 HU can round
    the other way (seen on AMD EPYC: 3 of 7,200 voxels 1 HU apart).
    """
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == names
    for name in names:
        got = np.asanyarray(nib.load(folder / name).dataobj).astype(np.int32)
        expected = np.asanyarray(nib.load(reference / name).dataobj).astype(np.int32)
        assert got.shape == expected.shape, name
        worst = int(np.abs(got - expected).max())
        assert worst <= max_hu_difference, f"{name}: {worst} HU apart (allowed {max_hu_difference})"


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int = 2) -> None:
    """The torchrun environment of process ``rank`` of ``world_size`` on one node."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_convert_under_torchrun_shards_the_files(
    convert_world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ranks 0 and 1 of 2 through convert_paths into one folder: all check, barrier, each its share.

    Both ranks run in this process. The barrier is simulated by running rank 1 entirely inside rank
    0's barrier, i.e. after rank 0 has checked every output and before it writes any: one of the
    orders the real barrier allows, and the one where an early write would fail a later check.
    """
    model = load_model(convert_world["run"], device="cpu")
    out = tmp_path / "out"
    written: dict[int, list[Path]] = {}
    barriers: list[int] = []

    def convert_as(rank: int) -> None:
        _as_rank(monkeypatch, rank)
        written[rank] = convert_paths(model, convert_world["scans"], out)

    def barrier(context: DistributedContext) -> None:
        barriers.append(context.rank)
        assert not out.exists() or not any(out.iterdir())  # no rank writes before all have checked
        if context.rank == 0:
            convert_as(1)

    monkeypatch.setattr(distributed, "cpu_barrier", barrier)
    with caplog.at_level(logging.INFO, logger="medcyclegan"):
        convert_as(0)
    assert barriers == [0, 1]
    assert [p.name for p in written[0]] == ["case00.nii.gz", "case02.nii.gz"]  # strided share
    assert [p.name for p in written[1]] == ["case01.nii.gz"]
    assert not set(written[0]) & set(written[1])
    assert sorted(written[0] + written[1]) == sorted(out.iterdir())
    _same_outputs(out, convert_world["single"])  # every file once, bit-identical to one process's output
    assert "process 0 of 2 converts 2 of 3 volume(s)" in caplog.text
    assert "process 1 of 2 converts 1 of 3 volume(s)" in caplog.text

    # An existing output stops every rank at the check, before the barrier and before any work.
    (out / "case00.nii.gz").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    for rank in range(2):
        _as_rank(monkeypatch, rank)
        with pytest.raises(OutputError, match="already exists"):
            convert_paths(model, convert_world["scans"], out)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before and barriers == [0, 1]


def test_convert_keeps_the_cpu_under_torchrun_and_takes_gpu_local_rank_on_cuda(
    convert_world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device choice convert shares with training (``local_device``), without a GPU."""
    _as_rank(monkeypatch, 1)
    assert load_model(convert_world["run"], device="cpu").device == torch.device("cpu")
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    context = distributed.detect()
    assert distributed.local_device(context, torch.device("cuda")) == torch.device("cuda", 1)
    assert current == [1]
    assert distributed.local_device(context, torch.device("cpu")) == torch.device("cpu")
    assert distributed.local_device(DistributedContext(), torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="needs GPU 1, but this node has 1"):
        distributed.local_device(context, torch.device("cuda"))


def test_single_input_under_torchrun_is_converted_by_rank0_only(
    convert_world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_model(convert_world["run"], device="cpu")
    scan = convert_world["scans"] / "case01.nii.gz"
    monkeypatch.setattr(distributed, "cpu_barrier", lambda context: None)
    _as_rank(monkeypatch, 1)
    with caplog.at_level(logging.INFO, logger="medcyclegan"):
        assert convert_paths(model, scan, tmp_path / "a.nii.gz") == []
    assert "process 1 of 2 converts 0 of 1 volume(s)" in caplog.text
    assert not (tmp_path / "a.nii.gz").exists()
    _as_rank(monkeypatch, 0)
    assert convert_paths(model, scan, tmp_path / "a.nii.gz") == [tmp_path / "a.nii.gz"]


@pytest.mark.slow
def test_torchrun_converts_a_folder_on_two_processes(convert_world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["convert", str(convert_world["scans"]), "-o", str(out), "--model", str(convert_world["run"])]
    command = torchrun_command([*argv, "--device", "cpu"], 2)
    done = subprocess.run(command, capture_output=True, text=True, env=_torchrun_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Each process prints what it wrote, so every output is printed exactly once.
    printed = [Path(line) for line in done.stdout.splitlines() if line.strip()]
    assert sorted(printed) == sorted(out.iterdir()), done.stdout
    # This process converted the reference with its own thread count: within 1 HU.
    _same_outputs(out, convert_world["single"], max_hu_difference=1)
    # One process with the ranks' thread count (1) on the same machine: bit-identical.
    single = tmp_path / "single"
    one_process = [sys.executable, "-m", "medcyclegan", "--threads", "1", *argv[:3], str(single), *argv[4:]]
    done = subprocess.run(
        [*one_process, "--device", "cpu"], capture_output=True, text=True, env=_torchrun_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _same_outputs(out, single)

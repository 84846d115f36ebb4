"""UNIT on two CPU processes (gloo): the DDP-wrapped generators and discriminators stay equal on both
ranks, and each rank draws its own latent noise (saved per rank in the checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_unit import TINY_UNIT
from tiny import TINY_RUN, free_port, join_process_group, write_domains

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.models.unit import NETWORK_NAMES
from medcyclegan.train.trainer import Trainer

STEPS = 3


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank: a short UNIT run; writes whether the ranks' weights agree and its noise state."""
    join_process_group(rank, world_size, port)
    base = Path(root)
    mr, ct = sorted((base / "mr").glob("*.nii.gz")), sorted((base / "ct").glob("*.nii.gz"))
    cfg = load_config(None, {**TINY_RUN, **TINY_UNIT, "train.steps_per_epoch": 2, "train.max_steps": STEPS})
    trainer = Trainer(cfg, base / "run", mr, ct, show_progress=False)
    trainer.fit()
    nets = trainer.model.networks()
    weights = torch.cat([p.detach().reshape(-1) for name in NETWORK_NAMES for p in nets[name].parameters()])
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    dist.all_gather(gathered, weights)
    report = {
        "same_weights_on_all_ranks": all(torch.equal(gathered[0], w) for w in gathered),
        "noise": trainer.model.noise_rng.get_state().tolist(),
    }
    (base / f"report{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_rank_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unit_ddp")
    write_domains(root)
    # Forked as tests/test_distributed.py does (the ranks start with this process's imports).
    torch.multiprocessing.start_processes(
        _worker, args=(2, free_port(), str(root)), nprocs=2, join=True, start_method="fork"
    )
    return root


def test_two_ranks_train_the_same_weights_with_their_own_noise(two_rank_unit: Path) -> None:
    reports = [json.loads((two_rank_unit / f"report{r}.json").read_text()) for r in range(2)]
    assert all(r["same_weights_on_all_ranks"] for r in reports)
    assert reports[0]["noise"] != reports[1]["noise"]
    data = load_checkpoint(two_rank_unit / "run" / "checkpoints" / "last.pt")
    assert data["world_size"] == 2 and data["step"] == STEPS
    # Each rank's noise stream is in the checkpoint, for an exact two-rank resume.
    assert [state.tolist() for state in data["pools"]["noise"]] == [r["noise"] for r in reports]

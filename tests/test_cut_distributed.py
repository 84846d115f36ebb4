"""CUT on two CPU processes (gloo): DDP keeps G, D and F equal on both ranks, and a resume is exact.

CUT calls its generator several times before one backward pass (the translation of the batch, and
the encoder on the translation and on the source); this checks that DistributedDataParallel agrees.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from tiny import TINY_RUN, free_port, join_process_group, write_domains

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.train.trainer import Trainer

NETS = ("G_AB", "D_B", "F")
TOTAL_STEPS, STOP_STEP = 4, 2
# Identity NCE and flip equivariance on: every random draw of a step goes through the resume.
RUN = {
    **TINY_RUN,
    "model.kind": "cut",
    "cut.nce_layers": [0, 4, 8, 11],
    "cut.num_patches": 16,
    "cut.flip_equivariance": True,
    "train.steps_per_epoch": 2,
}


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    join_process_group(rank, world_size, port)
    base = Path(root)
    mr, ct = sorted((base / "mr").glob("*.nii.gz")), sorted((base / "ct").glob("*.nii.gz"))

    def run(folder: str, max_steps: int, resume: bool = False) -> Trainer:
        cfg = load_config(None, {**RUN, "train.max_steps": max_steps})
        trainer = Trainer(
            cfg, base / folder, mr, ct, resume=base / folder if resume else None, show_progress=False
        )
        trainer.fit()
        return trainer

    straight = run("straight", TOTAL_STEPS)
    weights = torch.cat(
        [p.detach().reshape(-1) for n in NETS for p in straight.model.networks()[n].parameters()]
    )
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    dist.all_gather(gathered, weights)
    run("resumed", STOP_STEP)
    run("resumed", TOTAL_STEPS, resume=True)
    report = {"same_weights_on_all_ranks": all(torch.equal(gathered[0], w) for w in gathered)}
    (base / f"report{rank}.json").write_text(json.dumps(report))


def test_two_ranks_agree_and_resume_exactly(tmp_path: Path) -> None:
    write_domains(tmp_path)
    torch.multiprocessing.start_processes(
        _worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    for rank in range(2):
        assert json.loads((tmp_path / f"report{rank}.json").read_text())["same_weights_on_all_ranks"]
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert straight["world_size"] == 2 and straight["step"] == TOTAL_STEPS == resumed["step"]
    for net in NETS:
        for key, value in straight[net].items():
            assert torch.equal(resumed[net][key], value), f"{net}.{key}"
    # Each rank's patch and flip stream, as the checkpoint gathers it.
    for a, b in zip(straight["pools"]["sampling"], resumed["pools"]["sampling"], strict=True):
        assert torch.equal(a, b)

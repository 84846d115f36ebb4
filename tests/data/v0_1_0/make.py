"""Writes the 0.1.0 compatibility fixture of ``tests/test_compat.py`` (run once, with medcyclegan 0.1.0).

Made with commit f9ce753 (medcyclegan 0.1.0, before the training engine was split into models and a
loop), one thread, on the 2-core development machine::

    git worktree add /tmp/v010 f9ce753
    cd /tmp/v010 && OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tests/data/v0_1_0/make.py OUT

It writes ``mr/`` and ``ct/`` (two tiny heads each), ``run/`` (a run stopped after 5 of its 12 steps:
``checkpoints/last.pt``, ``config.yaml``, ``data.json``), ``synth_ct.nii.gz`` (``convert`` of
``mr/case00.nii.gz`` with that run) and ``resumed_G_AB.pt`` (G_AB after ``--resume`` to the end).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from medcyclegan.config import load_config
from medcyclegan.convert import convert_file, load_model
from medcyclegan.train.api import train_from_folders
from tests.tiny import TINY_RUN, write_domain

out = Path(sys.argv[1])
mr = write_domain(out / "mr", "mr", 2, seed=1)
ct = write_domain(out / "ct", "ct", 2, seed=2)
cfg = load_config(None, {**TINY_RUN, "train.max_steps": 5, "data.val_fraction": 0.0})
train_from_folders(cfg, out / "run", src=mr, tgt=ct, show_progress=False)
(out / "run" / "sources.json").unlink()  # absolute paths of this machine
convert_file(load_model(out / "run"), mr / "case00.nii.gz", out / "synth_ct.nii.gz")
work = out / "resumed"
shutil.copytree(out / "run", work)
resumed = load_config(None, {**TINY_RUN, "train.max_steps": None, "data.val_fraction": 0.0})
train_from_folders(resumed, work, src=mr, tgt=ct, resume=True, show_progress=False)
last = torch.load(work / "checkpoints" / "last.pt", weights_only=True)
assert last["step"] == 12, last["step"]
torch.save(last["G_AB"], out / "resumed_G_AB.pt")
shutil.rmtree(work)

"""pix2pix (``--model pix2pix``): registered pairs in, the reference's step, the loop's services out.

Covers the step on a tiny batch, the conditional discriminator, exact resume through the Trainer,
conversion onto the input's grid, ``info --json``, ``augment``, validation on held-out whole pairs,
the pairing errors (unmatched names, another grid) and the paired slices (the same z, crop and flip
for A and B).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import (
    AFFINE,
    HEAD_SHAPE,
    TINY_RUN,
    files,
    free_port,
    head,
    join_process_group,
    one_error_line,
    save_volume,
    tiny_config,
    write_domain,
)
from torch import nn

from medcyclegan.augment import augment_dataset
from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import DataConfig, load_config
from medcyclegan.convert import load_model
from medcyclegan.data.normalise import NormParams
from medcyclegan.data.prepare import PreparedVolume
from medcyclegan.data.slices import PairedSliceDataset
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.io.lock import LOCK_FILE
from medcyclegan.io.pairs import RegisteredPairs, check_registered_pairs
from medcyclegan.models import model_class
from medcyclegan.models.pix2pix import Pix2Pix
from medcyclegan.nets import UnetGenerator, count_parameters
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.train.api import check_pairs, resume_config, train_from_folders
from medcyclegan.train.data_module import TrainingData, pair_files
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer

# The tiny pix2pix: TINY_RUN's networks and schedule, a 5-level U-Net (32 px slices), a pool of 4.
TINY_PIX2PIX = {**TINY_RUN, "model.kind": "pix2pix", "model.unet_downs": 5}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three registered MR/CT pairs (same case names, same grid)."""
    root = tmp_path_factory.mktemp("pairs")
    return write_domain(root / "mr", "mr", 3, 1), write_domain(root / "ct", "ct", 3, 2)


@pytest.fixture(scope="module")
def run(pairs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pix2pix run of 4 steps, one pair held out for validation (read-only)."""
    mr, ct = pairs
    out = tmp_path_factory.mktemp("pix2pix") / "run"
    cfg = tiny_config(**{**TINY_PIX2PIX, "train.max_steps": 4, "data.val_fraction": 0.34})
    train_from_folders(cfg, out, src=mr, tgt=ct, show_progress=False)
    return out


def _batch(n: int, channels: int, size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return {
        domain: {
            "image": torch.rand(n, channels, size, size, generator=generator) * 2 - 1,
            "mask": torch.ones(n, 1, size, size),
        }
        for domain in ("A", "B")
    }


# ------------------------------------------------------------------------------------------ the model


def test_registered_one_way_and_paired() -> None:
    cls = model_class("pix2pix")
    assert cls is Pix2Pix and cls.paired and cls.directions == ("AB",)
    assert not model_class("cyclegan").paired


def test_the_default_is_the_reference_configuration() -> None:
    cfg = load_config(None, {"model.kind": "pix2pix"})
    with torch.device("meta"):  # counted without allocating the weights
        networks = Pix2Pix.build_networks(cfg)
    # unet_256 at ngf 64, 1 -> 1 channels: the reference code's count (tests/test_unet.py).
    assert count_parameters(networks["G_AB"]) == 54_407_809
    # The package's InstanceNorm PatchGAN on 1 + 1 channels; the reference's BatchNorm one has 2,764,609.
    assert count_parameters(networks["D_B"]) == 2_763_713


def test_step_on_a_tiny_batch_is_the_references_losses() -> None:
    cfg = tiny_config(**{**TINY_PIX2PIX, "data.context_slices": 1})
    torch.manual_seed(0)
    model = Pix2Pix(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    assert isinstance(model.G_AB, UnetGenerator) and model.G_AB.norm == "batch"
    # Conditional: D sees the source and the target slices stacked, 2 x (2k + 1) channels.
    first_conv = next(m for m in model.D_B.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2 * 3
    batch = _batch(2, 3)
    with torch.no_grad():  # this level count has no dropout: G(A) in training mode is what the step sees
        expected_l1 = 100.0 * (model.G_AB(batch["A"]["image"]) - batch["B"]["image"]).abs().mean()
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in model.networks().items()}
    losses = model.train_step(batch)
    assert set(losses) == set(Pix2Pix.loss_columns)
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["G_L1"], expected_l1)
    torch.testing.assert_close(losses["loss_G"], losses["G_GAN"] + losses["G_L1"])
    for name, net in model.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    # Vanilla GAN at the start: D's BCE is near log 2.
    assert abs(float(losses["loss_D"]) - float(np.log(2))) < 0.2


def test_state_round_trips_with_a_weight_average() -> None:
    cfg = tiny_config(**{**TINY_PIX2PIX, "model.ema_decay": 0.9})
    torch.manual_seed(0)
    model = Pix2Pix(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    model.train_step(_batch(2, 1))
    state = model.state_dict()
    assert set(state) == {
        "G_AB",
        "D_B",
        "opt_G",
        "opt_D",
        "sched_G",
        "sched_D",
        "pool_AB",
        "G_AB_ema",
        "ema_updates",
    }
    assert Pix2Pix.translator_state_key(cfg, "AB") == "G_AB_ema"
    other = Pix2Pix(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    other.load_state_dict(state)
    for key, value in model.translator("AB").state_dict().items():
        assert torch.equal(other.translator("AB").state_dict()[key], value), key
    with pytest.raises(ValueError, match="translates only AB"):
        model.translator("BA")


def test_resnet_generator_stays_selectable() -> None:
    cfg = tiny_config(**{**TINY_PIX2PIX, "model.generator": "resnet"})
    model = Pix2Pix(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    assert type(model.G_AB).__name__ == "ResnetGenerator"
    assert all(torch.isfinite(v) for v in model.train_step(_batch(2, 1)).values())


# ------------------------------------------------------------------------------------- through the loop


def test_resume_is_exact(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    mr, ct = (files(folder) for folder in pairs)
    overrides = {**TINY_PIX2PIX, "train.max_steps": 6}  # across an epoch end (4 steps an epoch)
    straight = Trainer(tiny_config(**overrides), tmp_path / "a", mr, ct, show_progress=False)
    straight.fit()
    first = Trainer(
        tiny_config(**{**overrides, "train.max_steps": 3}), tmp_path / "b", mr, ct, show_progress=False
    )
    first.fit()
    resumed = Trainer(
        tiny_config(**overrides), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 3
    resumed.fit()
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for name in ("G_AB", "D_B"):
        for key, value in a[name].items():
            assert torch.equal(b[name][key], value), f"{name}.{key}"  # BatchNorm statistics too
    # The image pool of (A, fake B) pairs: the same stored pairs and random state.
    for key, value in a["pool_AB"].items():
        assert torch.equal(torch.as_tensor(b["pool_AB"][key]), torch.as_tensor(value)), key
    assert len(a["pool_AB"]["images"]) == 4


def test_a_run_validates_on_held_out_pairs_and_keeps_the_best(run: Path) -> None:
    data = load_checkpoint(run / "checkpoints" / "last.pt")
    assert data["best"]["metric"] == "val/mae" and data["best"]["value"] is not None
    assert (run / "checkpoints" / "best.pt").is_file()
    header = (run / "val_metrics.csv").read_text().splitlines()[0]
    assert "val/mae" in header and "cycle" not in header
    assert (run / "metrics.csv").read_text().splitlines()[0] == "step,epoch,lr,loss_G,loss_D,G_GAN,G_L1"


def test_resume_refuses_another_pix2pix_setting(run: Path) -> None:
    assert resume_config(run, {"pix2pix.lambda_l1": 100.0}).pix2pix.lambda_l1 == 100.0  # the same: accepted
    with pytest.raises(ConfigError, match=r"pix2pix\.lambda_l1"):
        resume_config(run, {"pix2pix.lambda_l1": 50.0})


def test_held_out_validation_holds_out_whole_pairs(pairs: tuple[Path, Path]) -> None:
    mr, ct = (files(folder) for folder in pairs)
    cfg = tiny_config(**{**TINY_PIX2PIX, "data.val_fraction": 0.34})
    roles = {"src": mr, "tgt": ct, "val_src": None, "val_tgt": None, "src_masks": None, "tgt_masks": None}
    data = TrainingData(cfg, roles, DistributedContext(), paired=True)
    names = [[Path(v.source).name for v in volumes] for volumes in (data.val_src, data.val_tgt)]
    assert names[0] == names[1] and len(names[0]) == 1
    train = [[Path(v.source).name for v in volumes] for volumes in (data.src_volumes, data.tgt_volumes)]
    assert train[0] == train[1] and names[0][0] not in train[0]
    assert data.val_pairs == [(0, 0)]


def test_batches_take_the_same_slice_of_both_volumes(pairs: tuple[Path, Path]) -> None:
    mr, ct = (files(folder) for folder in pairs)
    cfg = tiny_config(**TINY_PIX2PIX)
    roles = {"src": mr, "tgt": ct, "val_src": None, "val_tgt": None, "src_masks": None, "tgt_masks": None}
    data = TrainingData(cfg, roles, DistributedContext(), paired=True)
    assert data.pairs is not None and data.src_dataset is data.tgt_dataset is data.pairs
    batches = list(data.epoch(0))
    assert len(batches) == data.steps_per_epoch == 4
    for batch in batches:
        assert batch["A"]["image"].shape == batch["B"]["image"].shape == (2, 1, 32, 32)
        assert torch.equal(batch["A"]["volume_index"], batch["B"]["volume_index"])
        assert torch.equal(batch["A"]["slice_index"], batch["B"]["slice_index"])
    # A resumed epoch (from step 2) gets the same batches as the uninterrupted one.
    for late, again in zip(batches[2:], data.epoch(0, start=2)):
        assert torch.equal(late["B"]["image"], again["B"]["image"])


def test_converts_onto_the_input_grid(run: Path, tmp_path: Path, cli) -> None:
    # An odd slice size (padded to the U-Net's 32) and an oblique, shifted grid.
    affine = np.array([[0.0, -1.8, 0.2, 30.0], [1.9, 0.0, 0.0, -12.5], [0.0, 0.1, 3.5, 7.25], [0, 0, 0, 1]])
    source = save_volume(tmp_path / "scan.nii.gz", head((37, 29, 5), "mr"), affine)
    out = tmp_path / "scan_synthct.nii.gz"
    result = cli("convert", source, "-o", out, "-m", run, "--device", "cpu")
    assert result.code == 0, result.err
    written, given = nib.load(out), nib.load(source)
    assert written.shape == given.shape
    np.testing.assert_array_equal(written.affine, given.affine)
    values = np.asarray(written.dataobj)
    assert values.dtype == np.int16 and values.min() >= -1024


def test_info_json(run: Path, cli) -> None:
    result = cli("info", run, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["model"] == "pix2pix" and summary["networks"]["generator"]["type"] == "unet"
    with torch.device("meta"):
        unet = UnetGenerator(1, 1, ngf=8, n_downs=5, norm="batch")
    assert summary["networks"]["generator"]["parameters"] == count_parameters(unet) == 260_945


def test_augment_with_a_pix2pix_model(run: Path, tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    save_volume(images / "p1.nii.gz", head(HEAD_SHAPE, "mr"))
    label = np.zeros(HEAD_SHAPE, dtype=np.uint8)
    label[10:20, 12:30, 1:4] = 1
    save_volume(labels / "p1.nii.gz", label)
    result = augment_dataset(images, labels, load_model(run, device="cpu"), tmp_path / "raw", dataset_id=3)
    synthetic = nib.load(result.dataset_dir / "imagesTr" / "p1_synth_0000.nii.gz")
    assert synthetic.shape == HEAD_SHAPE and np.array_equal(synthetic.affine, AFFINE)
    assert not result.check.problems


def _two_rank_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One of two gloo ranks: a straight pix2pix run, a run stopped early and its resumption."""
    join_process_group(rank, world_size, port)
    base = Path(root)
    mr, ct = files(base / "mr"), files(base / "ct")

    def run(folder: str, max_steps: int, resume: bool = False) -> Trainer:
        cfg = tiny_config(**{**TINY_PIX2PIX, "train.steps_per_epoch": 2, "train.max_steps": max_steps})
        trainer = Trainer(
            cfg, base / folder, mr, ct, resume=base / folder if resume else None, show_progress=False
        )
        trainer.fit()
        return trainer

    straight = run("straight", 4)
    # Parameters (BatchNorm's running statistics are rank 0's: DDP broadcasts them before each forward).
    weights = torch.cat(
        [p.detach().reshape(-1) for net in straight.model.networks().values() for p in net.parameters()]
    )
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, weights)
    run("resumed", 2)
    run("resumed", 4, resume=True)
    same = all(torch.equal(gathered[0], w) for w in gathered)
    (base / f"report{rank}.json").write_text(json.dumps({"same_weights_on_all_ranks": same}))


def test_two_ranks_agree_and_resume_exactly(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    mr, ct = pairs
    shutil.copytree(mr, tmp_path / "mr")
    shutil.copytree(ct, tmp_path / "ct")
    port = free_port()
    torch.multiprocessing.start_processes(
        _two_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    for rank in range(2):
        assert json.loads((tmp_path / f"report{rank}.json").read_text())["same_weights_on_all_ranks"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["world_size"] == 2 and set(a["pools"]) == {"AB"}
    for name in ("G_AB", "D_B"):
        for key, value in a[name].items():
            assert torch.equal(b[name][key], value), f"{name}.{key}"


# --------------------------------------------------------------------------------------------- pairs


def test_check_pairs_cli_accepts_registered_pairs(pairs: tuple[Path, Path], cli) -> None:
    mr, ct = pairs
    result = cli("train", "--model", "pix2pix", "--check-pairs", "--src", mr, "--tgt", ct)
    assert result.code == 0, result.err
    assert "3 training pair(s) matched by case name, each on one grid (headers read" in result.out


def test_unmatched_case_names_are_one_line_naming_them(pairs: tuple[Path, Path], tmp_path: Path, cli) -> None:
    mr, _ = pairs
    ct = write_domain(tmp_path / "ct", "ct", 2, 2)
    (ct / "case01.nii.gz").rename(ct / "other.nii.gz")
    for extra in ((), ("--check-pairs",)):
        result = cli(
            "train", "--model", "pix2pix", "--src", mr, "--tgt", ct, "--out", tmp_path / "run", *extra
        )
        line = one_error_line(result)
        assert "pix2pix trains on registered pairs" in line
        assert "cases case01, case02 of --src have no --tgt volume" in line
        assert "case other of --tgt has no --src volume" in line
    # Refused before anything is written (the run folder holds its lock file only).
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_FILE]


def test_unpaired_folders_are_refused_for_pix2pix_only(tmp_path: Path, cli) -> None:
    mr, ct = write_domain(tmp_path / "mr", "mr", 2, 1), tmp_path / "ct"
    for i in range(2):
        save_volume(ct / f"scan{i}.nii.gz", head(HEAD_SHAPE, "ct", i))
    line = one_error_line(
        cli("train", "--model", "pix2pix", "--src", mr, "--tgt", ct, "--out", tmp_path / "run")
    )
    assert "cases case00, case01 of --src have no --tgt volume" in line
    line = one_error_line(cli("train", "--check-pairs", "--src", mr, "--tgt", ct))
    assert "--check-pairs checks the registered pairs of a paired model" in line


def _scaled_z(affine: np.ndarray) -> np.ndarray:
    return affine @ np.diag([1.0, 1.0, 1.25, 1.0])


def _shifted(affine: np.ndarray) -> np.ndarray:
    moved = affine.copy()
    moved[0, 3] += 3.0
    return moved


def _rotated(affine: np.ndarray) -> np.ndarray:
    c, s = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    rotation = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rotation @ affine


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_scaled_z, "spacing (2, 2, 4) vs (2, 2, 5) mm"),
        (_shifted, "origin (0, 0, 0) vs (3, 0, 0) mm (RAS)"),
        (_rotated, "direction differs"),
    ],
)
def test_another_grid_is_named_by_what_differs(tmp_path: Path, change, named: str) -> None:
    mr, ct = write_domain(tmp_path / "mr", "mr", 2, 1), write_domain(tmp_path / "ct", "ct", 2, 2)
    moved = ct / "case01.nii.gz"
    save_volume(moved, np.asarray(nib.load(moved).dataobj), change(AFFINE.copy()))
    with pytest.raises(InputError) as info:
        check_pairs(tiny_config(**TINY_PIX2PIX), src=mr, tgt=ct)
    message = str(info.value)
    assert f"case 'case01' on different grids: {named}" in message and "case00" not in message


def test_another_shape_and_validation_pairs_are_checked_too(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    mr, ct = pairs
    val_mr = write_domain(tmp_path / "val_mr", "mr", 1, 3)
    val_ct = write_domain(tmp_path / "val_ct", "ct", 1, 4, shape=(40, 44, 7))
    with pytest.raises(
        InputError,
        match=r"--val-src and --val-tgt.*case 'case00' on different grids: shape \(40, 44, 6\) vs \(40, 44, 7\) \(RAS\)",
    ):
        check_pairs(tiny_config(**TINY_PIX2PIX), src=mr, tgt=ct, val_src=val_mr, val_tgt=val_ct)


def test_a_case_name_given_twice_and_long_lists_are_named(tmp_path: Path) -> None:
    mr, ct = write_domain(tmp_path / "mr", "mr", 1, 1), write_domain(tmp_path / "ct", "ct", 1, 2)
    twin = save_volume(ct / "case00.nrrd", head(HEAD_SHAPE, "ct"))
    check = check_registered_pairs(files(mr), [*files(ct), twin])
    assert check.problems(("--src", "--tgt")) == [
        f"two --tgt volumes are named 'case00' ({ct / 'case00.nii.gz'}, {twin})"
    ]
    many = RegisteredPairs([], [f"s{i}" for i in range(7)], ["t0"], [], [])
    assert many.problems() == [
        "cases s0, s1, s2, s3, s4 and 2 more of source have no target volume",
        "case t0 of target has no source volume",
    ]


def test_pair_files_puts_targets_and_masks_in_pair_order(pairs: tuple[Path, Path]) -> None:
    mr, ct = (files(folder) for folder in pairs)
    masks = [Path(f"/masks/{p.name}") for p in ct]
    given = {
        "src": mr,
        "tgt": ct[::-1],
        "tgt_masks": masks[::-1],
        "src_masks": None,
        "val_src": None,
        "val_tgt": None,
    }
    ordered = pair_files(given, "pix2pix")
    assert ordered["src"] == mr and ordered["tgt"] == ct and ordered["tgt_masks"] == masks
    with pytest.raises(ValueError, match="pair order"):
        TrainingData(tiny_config(**TINY_PIX2PIX), given, DistributedContext(), paired=True)


# ------------------------------------------------------------------------------------ paired slices


def _coded_volume(shape: tuple[int, int, int], offset: float, mask: np.ndarray) -> PreparedVolume:
    """A prepared volume whose voxel (x, y, z) holds ``10000 x + 100 y + z + offset`` (exact in float32)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    image = (10000.0 * x + 100.0 * y + z + offset).astype(np.float32)
    params = NormParams(modality="ct", lower=-1024.0, upper=3000.0)
    spacing = (1.0, 1.0, 1.0)
    return PreparedVolume(image, mask, params, f"coded{offset}", shape, spacing, spacing)


def test_a_and_b_come_from_the_same_z_crop_and_flip() -> None:
    shape = (48, 40, 9)  # larger than the 32 px slices: random crops in training
    mask = np.ones(shape, dtype=bool)
    mask[:, :, 0] = False  # a slice without body: left out
    source, target = _coded_volume(shape, 0.0, mask), _coded_volume(shape, 0.5, mask)
    data_cfg = DataConfig(image_size=32, context_slices=1, augment=True, flip_prob=0.5, max_shift=0.1)
    dataset = PairedSliceDataset([source], [target], data_cfg, train=True, seed=7)
    assert len(dataset) == 8 and 0 not in dataset.slice_index.tolist()
    corners, flipped = set(), 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            a, b = item["A"]["image"], item["B"]["image"]
            assert item["A"]["slice_index"] == item["B"]["slice_index"]
            body = a != -1.0  # the air the shift pads with
            # The same voxels on both sides: B is A's voxel plus the 0.5 of its code, everywhere.
            assert torch.equal(b[body], a[body] + 0.5) and torch.equal(b[~body], a[~body])
            assert torch.equal(item["A"]["mask"], item["B"]["mask"])
            centre = a[1][body[1]]
            z = item["A"]["slice_index"]
            assert torch.all(torch.remainder(centre, 100) == z)  # the centre channel is slice z
            x = torch.div(a[1], 10000, rounding_mode="floor")
            column = x[:, 16][body[1][:, 16]]
            flipped += int(column[0] > column[-1])
            corners.add(float(a[1][body[1]][0]))
    assert flipped > 0 and len(corners) > 3  # flips and crops were drawn, and applied to both alike
    dataset.set_epoch(1)
    assert torch.equal(dataset[3]["B"]["image"], dataset[3]["B"]["image"])  # a pure function of the item


def test_paired_slices_need_body_in_both_volumes() -> None:
    shape = (32, 32, 4)
    body = np.ones(shape, dtype=bool)
    no_body_at_2 = body.copy()
    no_body_at_2[:, :, 2] = False
    data_cfg = DataConfig(image_size=32)
    dataset = PairedSliceDataset(
        [_coded_volume(shape, 0.0, body)], [_coded_volume(shape, 0.5, no_body_at_2)], data_cfg, train=False
    )
    assert dataset.slice_index.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="not on one grid"):
        PairedSliceDataset(
            [_coded_volume(shape, 0.0, body)],
            [_coded_volume((32, 30, 4), 0.5, body[:, :30])],
            data_cfg,
            train=False,
        )

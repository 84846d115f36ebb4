"""Does synthetic CT help segmentation? Five training sets, one segmentation network, real CT to test.

The benchmark issue 17 asks for. On the built-in head phantom (``medcyclegan.sample_data``), with
disjoint subjects drawn by dataset seed 0:

    source       MR with labels (``--n-source``, 6): the labelled data of another modality;
    unlabelled   CT without labels (``--n-unlabelled``, 6): the translation model's CT domain;
    scarce       CT with labels (``--n-scarce``, 2): the few labelled target scans;
    test         CT with labels (``--n-test``, 4): held out, never seen by any training.

Segmentation labels (from the phantom's tissue map, :data:`SEGMENTATION_LABELS`): 1 skull (cortical
bone and marrow), 2 brain (grey and white matter), 3 ventricles, 4 eyes; 0 is everything else.

Per seed (``--seeds``, 0,1), a translation model is trained MR -> CT, unpaired, on source MR and
unlabelled CT (``--config`` quick-cpu, ``optim.n_steps`` = ``--translation-steps``), and a
deliberately under-trained one with the same config and ``--undertrained-steps`` steps. Each writes
the synthetic CT of the source MR with ``medcyclegan.augment.augment_dataset`` (an nnU-Net v2 dataset,
checked by ``augment.check_dataset``), which the arms read back from its ``dataset.json``. Arms, each
the same 2D MONAI ``UNet`` trained from the same initial weights for the same ``--seg-steps`` steps:

    a  labelled MR only, tested on CT (no adaptation; per-image z-score, as nnU-Net does for MR);
    b  the synthetic CT of the source MR (the augment dataset) with the source labels;
    c  the scarce labelled real CT only;
    d  c plus b, pooled;
    e  c plus the synthetic CT of the under-trained translation model.

CT arms use nnU-Net's CT normalisation, fitted on the arm's own training foreground (labels > 0):
clip to the 0.5 and 99.5 percentiles, subtract the mean, divide by the standard deviation. Training:
random axial slices (batch ``--batch-size``; arms d and e draw every slice alike, as nnU-Net pools a
dataset, or real CT with probability ``--real-share``) with a random left-right flip, MONAI ``DiceCELoss``
(softmax), Adam (lr 3e-3); the slice sampling and the initial weights depend on the seed only.

Scores on every held-out real CT, per label, computed on the whole 3D volume: Dice
(``monai.metrics.DiceMetric``) and HD95 in mm (``monai.metrics.HausdorffDistanceMetric``,
percentile 95, with the voxel spacing); a label that a prediction lacks gets the volume's diagonal
(mm) as its HD95, the largest distance the volume holds, and is counted in ``empty``. Per arm and
seed the mean over test cases, then mean +- sample standard deviation over seeds. Per arm its time
(segmentation training + inference); the translation models' time (training + augment) is reported
beside them. The synthetic CT of each translation model is scored against the source subjects' true
CT (the phantom has it): MAE in HU inside the body and per segmentation label
(``medcyclegan.metrics.label_mae``), to say what the synthetic CT gets wrong where.

Pictures (``<out-json stem>_seed<S>.png``): a source subject's MR, its synthetic CT from both models
and its true CT with the label outlines; a test CT with its truth and every arm's prediction.

Usage:
    python benchmarks/bench_segmentation.py                       # about 17 minutes on 2 CPU cores
    python benchmarks/bench_segmentation.py --seeds 0,1,2 --seg-steps 600
    python benchmarks/bench_segmentation.py --tiny                # seconds (the test)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import BenchError, machine, parse_seeds, write_json

# medcyclegan, torch and monai are imported inside the functions that use them: --help and a bad
# argument answer at once.

# Segmentation label -> the phantom tissue labels (medcyclegan.sample_data.TISSUE_LABELS) it joins.
SEGMENTATION_LABELS: dict[str, tuple[str, ...]] = {
    "skull": ("cortical_bone", "marrow"),
    "brain": ("grey_matter", "white_matter"),
    "ventricles": ("ventricles",),
    "eyes": ("eye",),
}
LABEL_NAMES = tuple(SEGMENTATION_LABELS)
ARMS: dict[str, str] = {
    "a": "labelled MR only (no adaptation)",
    "b": "synthetic CT (augment) only",
    "c": "scarce real CT only",
    "d": "scarce real CT + synthetic CT",
    "e": "scarce real CT + synthetic CT of an under-trained model",
}
DATASET_SEED = 0
FULL_GROUPS = {"source": 6, "unlabelled": 6, "scarce": 2, "test": 4}
TINY_GROUPS = {"source": 1, "unlabelled": 1, "scarce": 1, "test": 1}
FULL_GRID = {"shape": (128, 128, 48), "spacing": (1.5, 1.5, 3.0)}  # sample-data's default grid
TINY_GRID = {"shape": (48, 48, 12), "spacing": (4.0, 4.0, 8.0)}
# The translation run writes no sample grids and no epoch checkpoints (only last.pt).
RUN_CONTROL: dict[str, Any] = {
    "train.sample_every": 1_000_000,
    "train.checkpoint_every": 1_000_000,
    "train.keep_epoch_checkpoints": 0,
    "train.save_every_steps": 0,
    "data.val_fraction": 0.0,
}
TINY_TRANSLATION: dict[str, Any] = {
    "data.image_size": 32,
    "model.ngf": 4,
    "model.n_blocks": 1,
    "model.ndf": 4,
    "model.n_layers_d": 2,
    "optim.batch_size": 2,
    "optim.pool_size": 4,
}
UNET_CHANNELS = (8, 16, 32, 64)
TINY_UNET_CHANNELS = (4, 8)
LEARNING_RATE = 3e-3
CT_PERCENTILES = (0.5, 99.5)  # nnU-Net's CTNormalization
# Label outline colours in the pictures (skull, brain, ventricles, eyes).
COLOURS = ((255, 220, 0), (0, 200, 255), (255, 60, 60), (80, 255, 80))


@dataclass
class Volume:
    """One case: image (X, Y, Z) float32 in RAS voxel order, its labels (uint8) and spacing (mm)."""

    case: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


# ------------------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1", help="seeds, comma-separated (default 0,1)")
    parser.add_argument("--config", default="quick-cpu", help="translation config (built-in name or YAML)")
    parser.add_argument("--translation-steps", type=int, default=None, help="translation steps (default 500)")
    parser.add_argument(
        "--undertrained-steps", type=int, default=None, help="steps of the under-trained model (default 20)"
    )
    parser.add_argument(
        "--seg-steps", type=int, default=None, help="segmentation steps per arm (default 450)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="segmentation slices per step (default 16)"
    )
    for group, count in FULL_GROUPS.items():
        parser.add_argument(
            f"--n-{group}", type=int, default=None, help=f"{group} subjects (default {count})"
        )
    parser.add_argument(
        "--real-share",
        type=float,
        default=None,
        help="arms d and e: share of real CT slices in each batch (default: pooled, each slice alike, as nnU-Net)",
    )
    parser.add_argument("--out-json", type=Path, default=Path("/tmp/bench_segmentation.json"))
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="data, runs, datasets (default: temporary)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny data and models, a few steps: seconds (tests)"
    )
    args = parser.parse_args(argv)
    args.seed_list = parse_seeds(args.seeds)
    defaults = {
        "translation_steps": (500, 3),
        "undertrained_steps": (20, 1),
        "seg_steps": (450, 3),
        "batch_size": (16, 4),
    }
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.undertrained_steps >= args.translation_steps:
        raise BenchError(
            f"--undertrained-steps ({args.undertrained_steps}) must be below --translation-steps "
            f"({args.translation_steps})"
        )
    if args.real_share is not None and not 0.0 < args.real_share < 1.0:
        raise BenchError(f"--real-share must be between 0 and 1 (exclusive); got {args.real_share}")
    args.groups = {}
    for group, count in (TINY_GROUPS if args.tiny else FULL_GROUPS).items():
        value = getattr(args, f"n_{group}")
        args.groups[group] = count if value is None else value
        if args.groups[group] < 1:
            raise BenchError(f"--n-{group} must be >= 1; got {args.groups[group]}")
    args.grid = TINY_GRID if args.tiny else FULL_GRID
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        raise BenchError(f"{args.work_dir}: --work-dir must be new or empty")
    translation_config(args, args.seed_list[0], args.translation_steps)  # a bad --config fails now
    return args


# ------------------------------------------------------------------------------------------------ data
def segmentation_lut() -> np.ndarray:
    """Phantom tissue label -> segmentation label (0 for a tissue that belongs to none)."""
    from medcyclegan.sample_data import TISSUE_LABELS

    lut = np.zeros(max(TISSUE_LABELS.values()) + 1, dtype=np.uint8)
    for value, tissues in enumerate(SEGMENTATION_LABELS.values(), start=1):
        for tissue in tissues:
            lut[TISSUE_LABELS[tissue]] = value
    return lut


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units(xyz="mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def make_data(root: Path, groups: dict[str, int], grid: dict[str, Any]) -> dict[str, Any]:
    """Writes the four disjoint groups as NIfTI (RAS voxel order), the label names as labels.json.

    Folders: ``source/{mr,labels,ct}`` (``ct``: the true CT, for scoring the translation only),
    ``unlabelled/ct``, ``scarce/{ct,labels}``, ``test/{ct,labels}``.
    """
    from medcyclegan.sample_data import make_head_phantom, subject_seed

    lut = segmentation_lut()
    description: dict[str, Any] = {"dataset_seed": DATASET_SEED, **grid, "groups": {}}
    index = 0
    for group, count in groups.items():
        names = []
        for _ in range(count):
            name = f"subj_{index:03d}"
            subject = make_head_phantom(subject_seed(DATASET_SEED, index), **grid)
            labels = lut[subject.labels]
            if group == "source":
                save_nifti(subject.mr, subject.affine, root / group / "mr" / f"{name}.nii.gz")
            save_nifti(subject.ct, subject.affine, root / group / "ct" / f"{name}.nii.gz")
            if group != "unlabelled":
                save_nifti(labels, subject.affine, root / group / "labels" / f"{name}.nii.gz")
            names.append(name)
            index += 1
        description["groups"][group] = names
    labels_json = {"background": 0, **{name: value for value, name in enumerate(LABEL_NAMES, start=1)}}
    (root / "labels.json").write_text(json.dumps(labels_json, indent=2) + "\n")
    return description


def read_folder(images: Path, labels: Path) -> list[Volume]:
    """Every image of ``images`` with the label map of the same case name from ``labels``."""
    import nibabel as nib

    from medcyclegan.io.discovery import case_name

    volumes = []
    for path in sorted(images.glob("*.nii.gz")):
        case = case_name(path).removesuffix("_0000")
        image = nib.load(path)
        label = nib.load(labels / f"{case}.nii.gz")
        if not np.allclose(image.affine, label.affine) or image.shape != label.shape:
            raise BenchError(f"{path}: not on the grid of its labels {labels / (case + '.nii.gz')}")
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        volumes.append(
            Volume(
                case,
                np.asarray(image.dataobj, dtype=np.float32),
                np.asarray(label.dataobj, dtype=np.uint8),
                spacing,
            )  # type: ignore[arg-type]
        )
    if not volumes:
        raise BenchError(f"{images}: no image found")
    return volumes


def read_augment_dataset(dataset_dir: Path) -> list[Volume]:
    """The synthetic cases of an augment dataset, read back the way nnU-Net does: from ``dataset.json``."""
    spec = json.loads((dataset_dir / "dataset.json").read_text())
    if spec.get("channel_names") != {"0": "CT"}:
        raise BenchError(f"{dataset_dir}: expected one CT channel, found {spec.get('channel_names')}")
    volumes = read_folder(dataset_dir / "imagesTr", dataset_dir / "labelsTr")
    if len(volumes) != spec["numTraining"]:
        raise BenchError(f"{dataset_dir}: {len(volumes)} cases, dataset.json says {spec['numTraining']}")
    return volumes


# ------------------------------------------------------------------------------------------ translation
def translation_config(args: argparse.Namespace, seed: int, steps: int) -> Any:
    from medcyclegan.config import load_config, resolve_config_path

    overrides = {
        **RUN_CONTROL,
        **(TINY_TRANSLATION if args.tiny else {}),
        "train.seed": seed,
        "optim.n_steps": steps,
        "train.device": "cpu",
        "train.log_every": min(50, steps),
    }
    return load_config(resolve_config_path(args.config), overrides)


def train_translation(
    args: argparse.Namespace, data: Path, work: Path, seed: int, steps: int, dataset_id: int
) -> dict[str, Any]:
    """Trains one MR -> CT model and writes the synthetic CT of the source MR with ``augment``."""
    from medcyclegan.augment import augment_dataset
    from medcyclegan.train.api import train_from_folders

    run_dir = work / "runs" / f"seed{seed}_{steps}steps"
    start = time.perf_counter()
    result = train_from_folders(
        translation_config(args, seed, steps), run_dir, src=data / "source" / "mr", tgt=data / "unlabelled" / "ct",
        show_progress=False,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    augmented = augment_dataset(
        data / "source" / "mr", data / "source" / "labels", run_dir, work / "nnUNet_raw", fmt="nnunetv2",
        dataset_id=dataset_id, name=f"SynthCTseed{seed}steps{steps}", labels_json=data / "labels.json", device="cpu",
    )  # fmt: skip
    augment_seconds = time.perf_counter() - start
    return {
        "steps": result.step,
        "train_seconds": train_seconds,
        "augment_seconds": augment_seconds,
        "dataset_dir": augmented.dataset_dir,
        "check": augmented.check.summary(),
    }


def translation_errors(synthetic: list[Volume], true_ct: dict[str, np.ndarray]) -> dict[str, float]:
    """MAE (HU) of the synthetic CT against the true CT: SynthRAD2023 inside the body, and per label."""
    from medcyclegan.metrics import label_mae, synthrad2023, synthrad_body_mask

    per_case: list[dict[str, float]] = []
    for volume in synthetic:
        case = volume.case.removesuffix("_synth")
        reference = true_ct[case]
        scores = {"mae": synthrad2023(volume.image, reference, synthrad_body_mask(reference))["mae"]}
        by_label = label_mae(volume.image, reference, volume.labels)
        scores.update(
            {f"mae_{name}": by_label.get(value, math.nan) for value, name in enumerate(LABEL_NAMES, 1)}
        )
        per_case.append(scores)
    return {key: float(np.nanmean([case[key] for case in per_case])) for key in per_case[0]}


# ------------------------------------------------------------------------------------------ segmentation
@dataclass
class Normaliser:
    """nnU-Net's CT normalisation (clip, then z-score with the training foreground's statistics), or a
    per-image z-score (``per_image``: nnU-Net's default for MR)."""

    per_image: bool
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit_ct(cls, volumes: Sequence[Volume]) -> Normaliser:
        foreground = np.concatenate([v.image[v.labels > 0] for v in volumes]).astype(np.float64)
        low, high = np.percentile(foreground, CT_PERCENTILES)
        return cls(
            False, float(low), float(high), float(foreground.mean()), max(float(foreground.std()), 1e-8)
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.per_image:
            return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)
        return ((np.clip(image, self.low, self.high) - self.mean) / self.std).astype(np.float32)

    def describe(self) -> str:
        if self.per_image:
            return "per-image z-score"
        return f"clip [{self.low:.0f}, {self.high:.0f}] HU, (x - {self.mean:.1f}) / {self.std:.1f}"


def axial_slices(volumes: Sequence[Volume], normalise: Normaliser) -> tuple[np.ndarray, np.ndarray]:
    """Every axial slice of every volume: images (N, 1, X, Y) float32, labels (N, 1, X, Y) int64."""
    images = [np.moveaxis(normalise(v.image), 2, 0) for v in volumes]
    labels = [np.moveaxis(v.labels, 2, 0) for v in volumes]
    return np.concatenate(images)[:, None], np.concatenate(labels)[:, None].astype(np.int64)


def make_unet(tiny: bool) -> Any:
    from monai.networks.nets import UNet

    channels = TINY_UNET_CHANNELS if tiny else UNET_CHANNELS
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=len(LABEL_NAMES) + 1, channels=channels,
        strides=(2,) * (len(channels) - 1), num_res_units=1,
    )  # fmt: skip


def slice_weights(training: Sequence[Volume], n_real: int, real_share: float | None) -> np.ndarray | None:
    """Sampling probability of every axial slice: ``None`` (uniform: the volumes pooled, as nnU-Net
    pools a dataset) unless ``real_share`` is given for a mix of real (the first ``n_real`` volumes)
    and synthetic ones: then a drawn slice is real with probability ``real_share``."""
    if real_share is None or not 0 < n_real < len(training):
        return None
    real = sum(v.image.shape[2] for v in training[:n_real])
    synthetic = sum(v.image.shape[2] for v in training[n_real:])
    return np.concatenate(
        [np.full(real, real_share / real), np.full(synthetic, (1.0 - real_share) / synthetic)]
    )


def train_segmentation(
    args: argparse.Namespace, training: Sequence[Volume], normalise: Normaliser, seed: int, n_real: int = 0
) -> Any:
    """Trains the 2D UNet for ``--seg-steps`` steps; initial weights and slice order depend on ``seed`` only
    (and on ``--real-share`` for a mix of ``n_real`` real volumes, first, and synthetic ones)."""
    import torch
    from monai.losses import DiceCELoss

    images, labels = axial_slices(training, normalise)
    torch.manual_seed(seed)
    net = make_unet(args.tiny)
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(seed)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    weights = slice_weights(training, n_real, args.real_share)
    net.train()
    for _ in range(args.seg_steps):
        if weights is None:
            drawn = rng.integers(0, len(images), args.batch_size)
        else:
            drawn = rng.choice(len(images), args.batch_size, p=weights)
        batch = torch.from_numpy(drawn)
        x, y = images_t[batch], labels_t[batch]
        if rng.random() < 0.5:  # the head is left-right symmetric: flip the batch along X
            x, y = x.flip(2), y.flip(2)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_function(net(x), y)
        loss.backward()
        optimiser.step()
    return net.eval()


def segment(net: Any, volume: Volume, normalise: Normaliser) -> np.ndarray:
    """The label map (X, Y, Z) the network predicts, slice by slice."""
    import torch

    slices = torch.from_numpy(np.moveaxis(normalise(volume.image), 2, 0)[:, None].copy())
    with torch.inference_mode():
        prediction = torch.cat([net(chunk).argmax(1) for chunk in slices.split(32)])
    return np.moveaxis(prediction.numpy().astype(np.uint8), 0, 2)


def score_segmentation(prediction: np.ndarray, volume: Volume) -> dict[str, Any]:
    """Dice and HD95 (mm) per label on the 3D volume, with MONAI; an empty prediction's HD95 is the diagonal."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    n_classes = len(LABEL_NAMES) + 1

    def one_hot(labels: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), n_classes).permute(
            3, 0, 1, 2
        )[None]

    pred, ref = one_hot(prediction).float(), one_hot(volume.labels).float()
    dice = DiceMetric(include_background=False, reduction="none")(pred, ref)[0]
    with warnings.catch_warnings():  # MONAI warns about an empty class (handled below) and a deprecation
        warnings.simplefilter("ignore")
        hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            pred, ref, spacing=list(volume.spacing)
        )[0]
    diagonal = float(np.linalg.norm(np.array(volume.labels.shape) * np.array(volume.spacing)))
    scores: dict[str, Any] = {"empty": []}
    for index, name in enumerate(LABEL_NAMES):
        scores[f"dice_{name}"] = float(dice[index])
        if not ref[0, index + 1].any():  # not in this case's truth (e.g. cut off by the field of view)
            scores[f"dice_{name}"] = scores[f"hd95_{name}"] = math.nan
        elif not pred[0, index + 1].any():
            scores[f"hd95_{name}"] = diagonal
            scores["empty"].append(name)
        else:
            scores[f"hd95_{name}"] = float(hd95[index])
    scores["dice_mean"] = float(np.nanmean([scores[f"dice_{name}"] for name in LABEL_NAMES]))
    return scores


def run_arm(
    args: argparse.Namespace,
    training: Sequence[Volume],
    normalise: Normaliser,
    test: Sequence[Volume],
    seed: int,
    n_real: int = 0,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    start = time.perf_counter()
    net = train_segmentation(args, training, normalise, seed, n_real)
    train_seconds = time.perf_counter() - start
    test_normalise = Normaliser(True) if normalise.per_image else normalise
    predictions = [segment(net, volume, test_normalise) for volume in test]
    cases = [score_segmentation(p, v) for p, v in zip(predictions, test)]
    keys = [k for k in cases[0] if k != "empty"]
    with warnings.catch_warnings():  # a label in no test case's truth stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = {key: float(np.nanmean([case[key] for case in cases])) for key in keys}
    scores.update(
        {
            "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds,
            "training_cases": len(training),
            "training_slices": int(sum(v.image.shape[2] for v in training)),
            "normalisation": normalise.describe(),
            "empty_predictions": sum(len(case["empty"]) for case in cases),
            "cases": {v.case: case for v, case in zip(test, cases)},
        }
    )
    return scores, predictions


# ------------------------------------------------------------------------------------------------ report
def summarise(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> key -> mean and sample standard deviation over the seeds (NaN std for one seed)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ARMS:
        arm_rows = [row for row in rows if row["arm"] == arm]
        summary[arm] = {}
        for key in keys:
            values = np.array([row[key] for row in arm_rows], dtype=np.float64)
            std = float(values.std(ddof=1)) if values.size > 1 else math.nan
            summary[arm][key] = {"mean": float(values.mean()), "std": std}
    return summary


def cell(stats: dict[str, float], fmt: str) -> str:
    text = fmt.format(stats["mean"])
    return text if math.isnan(stats["std"]) else f"{text} ± {fmt.format(stats['std'])}"


def tables(summary: dict[str, Any], translation_summary: dict[str, Any]) -> list[str]:
    dice_columns = [f"dice_{n}" for n in LABEL_NAMES] + ["dice_mean"]
    hd_columns = [f"hd95_{n}" for n in LABEL_NAMES]
    header = (
        "| arm | training data | "
        + " | ".join(f"Dice {n}" for n in LABEL_NAMES)
        + " | mean Dice | "
        + " | ".join(f"HD95 {n} [mm]" for n in LABEL_NAMES)
        + " | time [s] |"
    )
    lines = [header, "|" + "---|" * (len(dice_columns) + len(hd_columns) + 3)]
    for arm, description in ARMS.items():
        stats = summary[arm]
        lines.append(
            f"| {arm} | {description} | "
            + " | ".join(cell(stats[c], "{:.3f}") for c in dice_columns)
            + " | "
            + " | ".join(cell(stats[c], "{:.1f}") for c in hd_columns)
            + f" | {cell(stats['seconds'], '{:.0f}')} |"
        )
    mae_columns = ["mae"] + [f"mae_{n}" for n in LABEL_NAMES]
    translation = [
        "| translation model | steps | MAE body [HU] | "
        + " | ".join(f"MAE {n} [HU]" for n in LABEL_NAMES)
        + " | train + augment [s] |",
        "|" + "---|" * (len(mae_columns) + 3),
    ]
    for name, stats in translation_summary.items():
        translation.append(
            f"| {name} | {stats['steps']['mean']:.0f} | "
            + " | ".join(cell(stats[c], "{:.0f}") for c in mae_columns)
            + f" | {cell(stats['seconds'], '{:.0f}')} |"
        )
    return ["\n".join(lines), "\n".join(translation)]


def tile(image: np.ndarray, low: float, high: float, labels: np.ndarray | None, scale: int) -> np.ndarray:
    """An axial RAS slice drawn radiologically, grey in [low, high], with coloured label outlines."""
    from medcyclegan.figures import display_slice, window

    grey = window(display_slice(image), low, high)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        shown = display_slice(labels)
        for value, colour in enumerate(COLOURS, start=1):
            inside = shown == value
            border = inside & ~(
                np.roll(inside, 1, 0)
                & np.roll(inside, -1, 0)
                & np.roll(inside, 1, 1)
                & np.roll(inside, -1, 1)
            )
            rgb[border] = colour
    return np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))


def write_picture(
    path: Path,
    source: tuple[Volume, np.ndarray, Volume, Volume],
    test: Volume,
    predictions: dict[str, np.ndarray],
) -> None:
    """Row 1: source MR, synthetic CT (trained, under-trained), true CT, with the source labels.
    Row 2: a test CT, its truth, and each arm's prediction, as outlines on the CT."""
    from PIL import Image, ImageDraw, ImageFont

    mr, true_ct, synthetic, undertrained = source
    z = int(np.argmax((test.labels == LABEL_NAMES.index("ventricles") + 1).sum(axis=(0, 1))))
    zs = int(np.argmax((mr.labels == LABEL_NAMES.index("ventricles") + 1).sum(axis=(0, 1))))
    scale = max(1, 256 // max(test.image.shape[:2]))
    mr_high = float(np.percentile(mr.image, 99.5))
    row1 = [
        ("source MR", tile(mr.image[..., zs], 0, mr_high, mr.labels[..., zs], scale)),
        ("synthetic CT", tile(synthetic.image[..., zs], -200, 1400, None, scale)),
        ("under-trained synthetic CT", tile(undertrained.image[..., zs], -200, 1400, None, scale)),
        ("true CT", tile(true_ct[..., zs], -200, 1400, None, scale)),
        ("synthetic CT, brain window", tile(synthetic.image[..., zs], -20, 80, mr.labels[..., zs], scale)),
        ("true CT, brain window", tile(true_ct[..., zs], -20, 80, mr.labels[..., zs], scale)),
    ]
    row2 = [("test CT, truth", tile(test.image[..., z], -20, 80, test.labels[..., z], scale))] + [
        (f"{arm}: {ARMS[arm].split(' (')[0]}", tile(test.image[..., z], -20, 80, p[..., z], scale))
        for arm, p in predictions.items()
    ]
    font = ImageFont.load_default()
    tile_h, tile_w = row1[0][1].shape[:2]
    columns = max(len(row1), len(row2))
    text_h = 44
    canvas = Image.new("RGB", (columns * (tile_w + 4), 2 * (tile_h + text_h)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate((row1, row2)):
        for c, (title, array) in enumerate(row):
            left, top = c * (tile_w + 4), r * (tile_h + text_h)
            for i, line in enumerate(_wrap(title, 28)):
                draw.text((left + 2, top + 2 + 13 * i), line, fill=(255, 255, 255), font=font)
            canvas.paste(Image.fromarray(array), (left, top + text_h))
    canvas.save(path)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line][:3]


# --------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:

    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "tiny": args.tiny,
        "seeds": args.seed_list,
        "translation": {
            "config": args.config,
            "steps": args.translation_steps,
            "undertrained_steps": args.undertrained_steps,
        },
        "segmentation": {
            "network": f"monai.networks.nets.UNet 2D, channels {TINY_UNET_CHANNELS if args.tiny else UNET_CHANNELS}, "
            "num_res_units 1",
            "parameters": sum(p.numel() for p in make_unet(args.tiny).parameters()),
            "steps": args.seg_steps,
            "batch_size": args.batch_size,
            "real_share": args.real_share,
            "optimiser": f"Adam lr {LEARNING_RATE}",
            "loss": "monai.losses.DiceCELoss(softmax)",
            "labels": {name: list(tissues) for name, tissues in SEGMENTATION_LABELS.items()},
        },
        "arms": ARMS,
        "rows": [],
    }
    write_json(args.out_json, report)  # an unwritable --out-json is found now, not after the training
    data = work / "data"
    report["data"] = make_data(data, args.groups, args.grid)
    source_mr = read_folder(data / "source" / "mr", data / "source" / "labels")
    true_ct = {v.case: v.image for v in read_folder(data / "source" / "ct", data / "source" / "labels")}
    source_mr_by_case = {v.case: v for v in source_mr}
    scarce = read_folder(data / "scarce" / "ct", data / "scarce" / "labels")
    test = read_folder(data / "test" / "ct", data / "test" / "labels")
    translation_rows: list[dict[str, Any]] = []
    pictures = []
    for seed in args.seed_list:
        synthetic: dict[str, list[Volume]] = {}
        for model, steps in (("trained", args.translation_steps), ("under-trained", args.undertrained_steps)):
            log(f"seed {seed}: training the {model} translation model ({steps} steps) ...")
            made = train_translation(args, data, work, seed, steps, dataset_id=len(translation_rows) + 1)
            synthetic[model] = read_augment_dataset(made["dataset_dir"])
            errors = translation_errors(synthetic[model], true_ct)
            translation_rows.append(
                {
                    "model": model, "seed": seed, "steps": made["steps"], "seconds": made["train_seconds"] + made["augment_seconds"],
                    "train_seconds": made["train_seconds"], "augment_seconds": made["augment_seconds"],
                    "dataset_check": made["check"], **errors,
                }
            )  # fmt: skip
            log(f"seed {seed}: {model} model: MAE {errors['mae']:.0f} HU, {made['check']}")
        training_sets = {
            "a": (source_mr, Normaliser(True)),
            "b": (synthetic["trained"], None),
            "c": (scarce, None),
            "d": ([*scarce, *synthetic["trained"]], None),  # the real ones first (--real-share)
            "e": ([*scarce, *synthetic["under-trained"]], None),
        }
        predictions = {}
        for arm, (training, normaliser) in training_sets.items():
            normalise = normaliser or Normaliser.fit_ct(training)
            n_real = len(scarce) if arm in ("d", "e") else 0
            scores, arm_predictions = run_arm(args, training, normalise, test, seed, n_real)
            predictions[arm] = arm_predictions[0]
            report["rows"].append({"arm": arm, "seed": seed, **scores})
            log(f"seed {seed}: arm {arm}: mean Dice {scores['dice_mean']:.3f} in {scores['seconds']:.0f} s")
        report["translation_rows"] = translation_rows
        write_json(args.out_json, report)  # after every seed: a stopped benchmark keeps its numbers
        first = synthetic["trained"][0].case.removesuffix("_synth")
        under = {v.case: v for v in synthetic["under-trained"]}
        picture = args.out_json.with_name(f"{args.out_json.stem}_seed{seed}.png")
        write_picture(
            picture,
            (
                source_mr_by_case[first],
                true_ct[first],
                synthetic["trained"][0],
                under[f"{first}_synth"],
            ),
            test[0],
            predictions,
        )
        pictures.append(str(picture))
    keys = (
        [f"dice_{n}" for n in LABEL_NAMES] + ["dice_mean"] + [f"hd95_{n}" for n in LABEL_NAMES] + ["seconds"]
    )
    summary = summarise(report["rows"], keys)
    translation_summary: dict[str, Any] = {}
    for model in ("trained", "under-trained"):
        rows = [row for row in translation_rows if row["model"] == model]
        translation_summary[model] = {
            key: {
                "mean": float(np.mean([row[key] for row in rows])),
                "std": float(np.std([row[key] for row in rows], ddof=1)) if len(rows) > 1 else math.nan,
            }
            for key in ("steps", "seconds", "mae", *(f"mae_{n}" for n in LABEL_NAMES))
        }
    report.update(
        {
            "summary": summary,
            "translation_summary": translation_summary,
            "tables": tables(summary, translation_summary),
            "pictures": pictures,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return report


def log(message: str) -> None:
    print(f"[bench_segmentation] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from medcyclegan.errors import MedCycleGANError

    start = time.perf_counter()
    try:
        args = parse_args(argv)
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-segmentation-"))
        try:
            report = run(args, work)
        finally:
            if args.work_dir is None and not args.keep_work:
                shutil.rmtree(work, ignore_errors=True)
        report["seconds"] = time.perf_counter() - start
        write_json(args.out_json, report)
    except (BenchError, MedCycleGANError) as exc:
        print(f"bench_segmentation: {exc}", file=sys.stderr)
        return 2
    groups = ", ".join(f"{n} {g}" for g, n in args.groups.items())
    print(
        f"Segmentation of held-out real CT ({groups} subjects; seeds {args.seeds}; translation "
        f"{args.config} {args.translation_steps} steps, under-trained {args.undertrained_steps}; UNet "
        f"{args.seg_steps} steps of {args.batch_size} slices"
        + ("" if args.real_share is None else f", real share {args.real_share:g} in d and e")
        + f"; {report['machine']['torch_threads']} torch "
        f"thread(s); {report['seconds']:.0f} s in all)\n\n" + "\n\n".join(report["tables"])
    )
    print(f"\npictures: {', '.join(report['pictures'])}\nJSON: {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

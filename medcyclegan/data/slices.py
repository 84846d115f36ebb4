"""Axial training slices from prepared volumes: selection, 2.5D context, pad/crop, augmentation.

Slices are taken from :class:`~medcyclegan.data.prepare.PreparedVolume` objects already in memory (or
memory-mapped): ``SliceDataset.__getitem__`` does no file I/O and no normalisation, only an index, a
copy of ``2k + 1`` contiguous slices, a pad/crop and (in training) a flip.

Conventions:
    * a slice is (X, Y) in RAS voxel order (axis 0 towards R, axis 1 towards A); channels of a 2.5D
      stack are ``z - k, ..., z, ..., z + k`` (inferior to superior), edge slices replicated (the same
      convention as :func:`medcyclegan.inference.context_stack`);
    * slices are brought to ``image_size`` x ``image_size`` without changing their scale: padded
      symmetrically with air (``AIR_NORMALISED``, -1) when smaller, cropped when larger (centred at
      evaluation, at a random offset in training); never resized;
    * the fraction of body in a slice is measured on the prepared slice, before padding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import RandFlip, RandSpatialCrop, ResizeWithPadOrCrop, SpatialPad
from torch.utils.data import Dataset

from medcyclegan.config import DataConfig
from medcyclegan.data.normalise import AIR_NORMALISED
from medcyclegan.data.prepare import PreparedVolume, plane_volume

logger = logging.getLogger("medcyclegan")

# Images, and the mask channel (read back as "not body"), are padded with air: AIR_NORMALISED.


def select_slices(prepared: PreparedVolume, min_body_fraction: float) -> list[int]:
    """Axial indices whose body mask covers at least ``min_body_fraction`` of the (prepared) slice."""
    mask_zxy = np.moveaxis(prepared.mask, 2, 0)
    depth = mask_zxy.shape[0]
    if depth == 0:
        return []
    fractions = np.count_nonzero(mask_zxy.reshape(depth, -1), axis=1) / float(mask_zxy[0].size)
    return [int(z) for z in np.flatnonzero(fractions >= min_body_fraction)]


def slice_with_context(image: np.ndarray, z: int, k: int) -> np.ndarray:
    """Slice ``z`` of a (X, Y, Z) volume with ``k`` neighbours each side as channels.

    Args:
        image: volume (X, Y, Z).
        z: axial index, ``0 <= z < Z``.
        k: context slices on each side (0 gives one channel).

    Returns:
        (2k+1, X, Y) array (a copy), channels ``z-k ... z+k`` inferior to superior, indices outside
        the volume replaced by the nearest edge slice.
    """
    depth = image.shape[2]
    if not 0 <= z < depth:
        raise IndexError(f"slice {z} is outside a volume of {depth} slices")
    indices = np.clip(np.arange(z - k, z + k + 1), 0, depth - 1)
    # Indexing the (Z, X, Y) view copies whole slices (contiguous for prepared volumes).
    return np.ascontiguousarray(np.moveaxis(image, 2, 0)[indices])


def pad_or_crop(
    array: np.ndarray | torch.Tensor, size: int, *, pad_value: float = AIR_NORMALISED
) -> torch.Tensor:
    """Centres a (C, X, Y) slice stack on a ``size`` x ``size`` canvas: symmetric pad and/or centred crop.

    The content keeps its scale and aspect ratio (never resized). Returns a float32 tensor (C, size, size).
    """
    with small_tensor_ops():
        fit = ResizeWithPadOrCrop((size, size), method="symmetric", mode="constant", value=pad_value)
        return _plain(fit(torch.as_tensor(array, dtype=torch.float32)))


@contextlib.contextmanager
def meta_tracking_off() -> Iterator[None]:
    """Switches MONAI's MetaTensor tracking off for the block (it costs a lot per op), then restores it."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


@contextlib.contextmanager
def small_tensor_ops() -> Iterator[None]:
    """MetaTensor tracking off and one torch thread for the block, both restored afterwards.

    An item is a few slices: torch's intra-op thread pool costs more than it saves on such tensors,
    and when the other cores are busy (other jobs, or the training step of the same process) its
    threads wait for each other. Measured on 256 x 256 slices on a loaded 2-core machine:
    23 slices/s with 2 threads, 1340 slices/s with 1. DataLoader workers already use one thread.
    """
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        with meta_tracking_off():
            yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the randomness of item ``index`` in ``epoch``: a pure function of the three numbers."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


def warn_if_cropped(volume: PreparedVolume, size: int, *, train: bool = True) -> bool:
    """Warns once, naming the file, when the volume's slices are larger than ``size`` and get cropped.

    Args:
        volume: a prepared volume (its in-plane size is measured on the prepared grid, in voxels).
        size: the square slice size of the dataset (``data.image_size``), in pixels.
        train: training crops at random offsets, evaluation at the centre (named in the message).

    Returns:
        True when a warning was logged.
    """
    nx, ny = (int(n) for n in volume.image.shape[:2])
    if nx <= size and ny <= size:
        return False
    spacing_text = " x ".join(f"{s:g}" for s in volume.spacing[:2])
    logger.warning(
        "%s: slices are %d x %d voxels (at %s mm), larger than data.image_size %d: %s sees %s %d x %d "
        "crops of them (raise --image-size, or a coarser --spacing, to use whole slices)",
        volume.source or "volume",
        nx,
        ny,
        spacing_text,
        size,
        "training" if train else "evaluation",
        "random" if train else "centred",
        size,
        size,
    )
    return True


class SliceDataset(Dataset):
    """Map-style dataset of the selected axial (or ``data.planes``) slices of prepared volumes.

    Items are ``{"image": FloatTensor (2k+1, S, S), "mask": FloatTensor (1, S, S) (body mask of the
    centre slice, 0/1), "volume_index": int, "slice_index": int}`` with ``S = data_cfg.image_size``.

    In training (``train=True``) slices larger than ``S`` are cropped at a random offset (one warning
    per such volume, naming its file, when the dataset is built); with
    ``data_cfg.augment`` also, applied identically to image and mask, a left-right flip (MONAI
    ``RandFlip`` on the R-L axis, probability ``flip_prob``) and in-plane shifts of up to
    ``max_shift * S`` pixels (random crop offsets within a -1 margin, MONAI ``RandSpatialCrop``).
    The random state of item ``i`` is seeded from ``(seed, epoch, i)`` only, so items are identical
    whatever the order, the worker process or a resume. Call :meth:`set_epoch` before building the
    epoch's DataLoader (workers get a copy of the dataset when the loader starts iterating; with
    ``persistent_workers`` they would keep the old epoch). Not safe to share between threads.

    With ``data_cfg.planes`` beyond ``["axial"]``, each volume also gives its coronal and/or sagittal
    slices (:func:`~medcyclegan.data.prepare.plane_volume`: Z resampled to the in-plane spacing,
    held in memory beside the volume); :attr:`volumes` then holds one volume per (volume, plane), in
    that order, and ``volume_index`` counts those. The flip mirrors the first slice axis: R-L for
    axial and coronal slices, A-P for sagittal ones (which have no R-L axis).

    Args:
        volumes: the prepared volumes.
        data_cfg: image_size, context_slices, min_body_fraction, augment, flip_prob, max_shift, planes.
        train: training mode (random crops and augmentation) or evaluation (centred, deterministic).
        seed: base seed of the augmentation.
    """

    def __init__(
        self, volumes: Sequence[PreparedVolume], data_cfg: DataConfig, *, train: bool, seed: int = 0
    ) -> None:
        self.volumes = [plane_volume(volume, plane) for volume in volumes for plane in data_cfg.planes]
        self.size = int(data_cfg.image_size)
        self.context_slices = int(data_cfg.context_slices)
        self.train = bool(train)
        self.augment = self.train and bool(data_cfg.augment)
        self.seed = int(seed)
        self.epoch = 0
        volume_index: list[int] = []
        slice_index: list[int] = []
        for v, volume in enumerate(self.volumes):
            selected = select_slices(volume, data_cfg.min_body_fraction)
            volume_index.extend([v] * len(selected))
            slice_index.extend(selected)
            if selected:
                warn_if_cropped(volume, self.size, train=self.train)
        self.volume_index = np.asarray(volume_index, dtype=np.int64)
        self.slice_index = np.asarray(slice_index, dtype=np.int64)
        margin = round(data_cfg.max_shift * self.size) if self.augment else 0
        # Pad to S + 2*margin (never crops), then take an S x S window: centred at evaluation, random
        # in training (a shift in [-margin, margin] for small slices, any offset for large ones).
        self._pad = SpatialPad(
            (self.size + 2 * margin,) * 2, method="symmetric", mode="constant", value=AIR_NORMALISED
        )
        self._crop = RandSpatialCrop((self.size, self.size), random_center=True, random_size=False)
        self._centre = ResizeWithPadOrCrop(
            (self.size, self.size), method="symmetric", mode="constant", value=AIR_NORMALISED
        )
        self._flip = RandFlip(prob=data_cfg.flip_prob, spatial_axis=0) if self.augment else None

    def __len__(self) -> int:
        return int(self.volume_index.size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation of ``epoch`` (items are a function of seed, epoch and index)."""
        self.epoch = int(epoch)

    def item_location(self, index: int) -> tuple[int, int]:
        """(volume index, axial slice index) of item ``index``."""
        return int(self.volume_index[index]), int(self.slice_index[index])

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} is outside a dataset of {len(self)} slices")
        return int(index) % len(self)

    def _context(self, volume: PreparedVolume, z: int) -> np.ndarray:
        """The 2k + 1 slices around ``z`` of ``volume``, (2k+1, X, Y), edge slices replicated."""
        depth = volume.image.shape[2]
        indices = np.clip(np.arange(z - self.context_slices, z + self.context_slices + 1), 0, depth - 1)
        return np.moveaxis(volume.image, 2, 0)[indices]

    def _place(self, stacked: np.ndarray, index: int) -> torch.Tensor:
        """The crop (random in training, centred otherwise) and flip of item ``index`` on every channel.

        One transform for all the channels of ``stacked`` (images and masks alike), drawn from the
        item's seed: what makes the masks (and a pair's two images) stay on their images.
        """
        both = torch.from_numpy(stacked)
        if self.train:
            state = np.random.RandomState(item_seed(self.seed, self.epoch, index))
            self._crop.set_random_state(state=state)
            both = self._crop(self._pad(both))
            if self._flip is not None:
                self._flip.set_random_state(state=state)
                both = self._flip(both)
        else:
            both = self._centre(both)
        return _plain(both)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        v, z = self.item_location(index)
        volume = self.volumes[v]
        channels = 2 * self.context_slices + 1
        # The mask rides along as one more channel so that every spatial transform is identical.
        stacked = np.empty((channels + 1, *volume.image.shape[:2]), dtype=np.float32)
        stacked[:channels] = self._context(volume, z)
        stacked[channels] = np.moveaxis(volume.mask, 2, 0)[z]
        with small_tensor_ops():
            both = self._place(stacked, index)
            image = both[:channels].contiguous()
            mask = (both[channels:] > 0.5).to(torch.float32)
        return {"image": image, "mask": mask, "volume_index": v, "slice_index": z}


class PairedSliceDataset(SliceDataset):
    """Slices of registered pairs of volumes: the source and target slice at the same z, placed alike.

    Item ``i`` is ``{"A": item of the source, "B": item of the target}``, each as a
    :class:`SliceDataset` item (``image``, ``mask``, ``volume_index``, ``slice_index``), with the
    same ``volume_index`` (the pair) and ``slice_index`` (z) on both sides, and one crop and flip,
    drawn from the item's seed, for the two images and their masks (they travel as channels of
    one tensor through one transform). A slice is used when both volumes' body masks cover at
    least ``min_body_fraction`` of it. Collated, a batch is ``{"A": batch, "B": batch}``: what a
    paired model's ``train_step`` takes.

    Args:
        sources: the prepared source volumes (domain A).
        targets: the prepared target volumes, ``targets[i]`` the pair of ``sources[i]``: on the same
            grid, so the same prepared grid.
        data_cfg, train, seed: as for :class:`SliceDataset`.

    Raises:
        ValueError: the lists differ in length or a pair's prepared grids differ (not a registered pair).
    """

    def __init__(
        self,
        sources: Sequence[PreparedVolume],
        targets: Sequence[PreparedVolume],
        data_cfg: DataConfig,
        *,
        train: bool,
        seed: int = 0,
    ) -> None:
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source and {len(targets)} target volumes cannot be pairs")
        for source, target in zip(sources, targets):
            if source.image.shape != target.image.shape:
                raise ValueError(
                    f"{source.source} and {target.source} are not on one grid "
                    f"({source.image.shape} vs {target.image.shape} prepared voxels)"
                )
        super().__init__(sources, data_cfg, train=train, seed=seed)
        self.targets = [plane_volume(volume, plane) for volume in targets for plane in data_cfg.planes]
        # Only the slices where the target has enough body too.
        with_body = {
            (v, z)
            for v, volume in enumerate(self.targets)
            for z in select_slices(volume, data_cfg.min_body_fraction)
        }
        keep = np.asarray(
            [(v, z) in with_body for v, z in zip(self.volume_index.tolist(), self.slice_index.tolist())],
            dtype=bool,
        )
        self.volume_index = self.volume_index[keep]
        self.slice_index = self.slice_index[keep]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        v, z = self.item_location(index)
        source, target = self.volumes[v], self.targets[v]
        c = 2 * self.context_slices + 1
        # Channels: source slices, target slices, source mask, target mask: one transform for all.
        stacked = np.empty((2 * c + 2, *source.image.shape[:2]), dtype=np.float32)
        stacked[:c] = self._context(source, z)
        stacked[c : 2 * c] = self._context(target, z)
        stacked[2 * c] = np.moveaxis(source.mask, 2, 0)[z]
        stacked[2 * c + 1] = np.moveaxis(target.mask, 2, 0)[z]
        with small_tensor_ops():
            placed = self._place(stacked, index)
            images = (placed[:c].contiguous(), placed[c : 2 * c].contiguous())
            masks = (
                (placed[2 * c : 2 * c + 1] > 0.5).to(torch.float32),
                (placed[2 * c + 1 :] > 0.5).to(torch.float32),
            )
        return {
            domain: {"image": image, "mask": mask, "volume_index": v, "slice_index": z}
            for domain, image, mask in zip(("A", "B"), images, masks)
        }


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A plain float32 torch.Tensor (drops a MetaTensor wrapper if tracking was on elsewhere)."""
    as_tensor = getattr(tensor, "as_tensor", None)
    out = as_tensor() if as_tensor is not None else tensor
    return out.to(torch.float32)

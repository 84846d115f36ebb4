"""Synthetic paired head phantom (T1-weighted MR and CT) for demos and tests.

Real MR/CT data cannot ship with the toolkit, so this module draws small random heads instead. Every
subject has its own anatomy (seeded): scalp (skin, subcutaneous fat, temporal muscle), skull (outer
and inner cortical tables around a diploe/marrow layer, skull base), cerebrospinal fluid, a folded
grey-matter cortex over white matter, deep grey nuclei, ventricles, an interhemispheric fissure, eyes
in fatty orbits, and air sinuses (frontal, ethmoid, sphenoid, maxillary, nasal cavity) in bony shells.
Structures are randomly sized, placed and rotated ellipsoids in a head frame that is itself rotated
and bent by a smooth random deformation.

From the tissue label map both images are formed the way the scanners would see it:

* MR (T1-weighted-like, arbitrary scanner units, about 0..1500): fat and white matter bright, grey
  matter darker, CSF dark, cortical bone and air dark, marrow medium; within-tissue texture, slight
  blurring (partial volume), a smooth multiplicative bias field and Rician noise (magnitude of complex
  Gaussian noise); integer-valued float32, like a reconstructed magnitude image.
* CT (Hounsfield units, int16): air -1000, fat about -100, skin/muscle/grey matter about 40, white
  matter about 25, CSF about 10, cortical bone 1150..1450 and marrow 300..600 (per subject, with
  spatial variation that the MR does not show), the same blurring and Gaussian noise (10..20 HU).

MR and CT of one subject are perfectly registered, so test subjects give exact paired ground truth.
Bone is dark in MR but bright in CT, and sinus air is dark in both: MR intensity alone cannot tell
bone from air, which is what makes the translation worth learning.

Arrays are in RAS voxel order (axis 0 towards Right, 1 towards Anterior, 2 towards Superior; axial
slices are ``array[:, :, z]``), and the field of view is centred on world (0, 0, 0) mm.

Example:
    >>> subject = make_head_phantom(0)
    >>> subject.ct.dtype, subject.ct.shape
    (dtype('int16'), (128, 128, 48))
    >>> dataset = write_sample_dataset("phantom")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medcyclegan import __version__
from medcyclegan.errors import ConfigError, OutputError
from medcyclegan.io.atomic import atomic_path, atomic_write_text
from medcyclegan.io.lock import LOCK_FILE, FolderLock

logger = logging.getLogger("medcyclegan")

DEFAULT_SHAPE: tuple[int, int, int] = (128, 128, 48)
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 3.0)

# Tissue label map values (uint8). Internal air (sinuses, nasal cavity) is inside the body mask.
BACKGROUND = 0
SKIN = 1
FAT = 2
CORTICAL_BONE = 3
MARROW = 4
CSF = 5
GREY_MATTER = 6
WHITE_MATTER = 7
VENTRICLES = 8
AIR_CAVITY = 9
EYE = 10
MUSCLE = 11

TISSUE_LABELS: dict[str, int] = {
    "background": BACKGROUND,
    "skin": SKIN,
    "fat": FAT,
    "cortical_bone": CORTICAL_BONE,
    "marrow": MARROW,
    "csf": CSF,
    "grey_matter": GREY_MATTER,
    "white_matter": WHITE_MATTER,
    "ventricles": VENTRICLES,
    "air_cavity": AIR_CAVITY,
    "eye": EYE,
    "muscle": MUSCLE,
}
_N_LABELS = len(TISSUE_LABELS)


@dataclass(frozen=True)
class _TissueValues:
    """Nominal image values of one tissue.

    Attributes:
        mr: nominal T1-weighted signal (scanner units) before gain, bias field and noise.
        ct_range: per-subject CT value drawn uniformly from this range (HU).
        ct_texture: standard deviation (HU) of the smooth within-tissue CT variation.
    """

    mr: float
    ct_range: tuple[float, float]
    ct_texture: float


TISSUE_VALUES: dict[int, _TissueValues] = {
    BACKGROUND: _TissueValues(0.0, (-1000.0, -1000.0), 0.0),
    SKIN: _TissueValues(800.0, (35.0, 50.0), 4.0),
    FAT: _TissueValues(1350.0, (-110.0, -85.0), 6.0),
    CORTICAL_BONE: _TissueValues(50.0, (1150.0, 1450.0), 80.0),
    MARROW: _TissueValues(750.0, (300.0, 600.0), 60.0),
    CSF: _TissueValues(220.0, (5.0, 15.0), 2.0),
    GREY_MATTER: _TissueValues(650.0, (35.0, 45.0), 3.0),
    WHITE_MATTER: _TissueValues(1000.0, (22.0, 30.0), 3.0),
    VENTRICLES: _TissueValues(220.0, (5.0, 15.0), 2.0),
    AIR_CAVITY: _TissueValues(0.0, (-1000.0, -1000.0), 0.0),
    EYE: _TissueValues(280.0, (5.0, 15.0), 2.0),
    MUSCLE: _TissueValues(550.0, (45.0, 60.0), 4.0),
}

# Labels that cavities (sinus walls, orbits) may replace: everything below the scalp fat.
_DEEP_TISSUES = (MUSCLE, CORTICAL_BONE, MARROW, CSF, GREY_MATTER, WHITE_MATTER, VENTRICLES)

CT_MIN_HU = -1024
CT_MAX_HU = 3071
# Partial-volume-like blurring, in voxels (in-plane, in-plane, through-plane).
_BLUR_SIGMA_VOXELS = (0.5, 0.5, 0.4)


@dataclass(eq=False)
class PhantomSubject:
    """One synthetic head: perfectly registered MR, CT, body mask and tissue labels.

    All arrays have shape (X, Y, Z) in RAS voxel order.

    Attributes:
        mr: T1-weighted-like MR, float32, integer-valued scanner units (about 0..1500).
        ct: CT in Hounsfield units, int16, clipped to [-1024, 3071].
        mask: body (head) mask, uint8 0/1; internal air cavities are inside it.
        labels: tissue label map, uint8, values of :data:`TISSUE_LABELS`.
        affine: 4x4 voxel-to-world matrix (RAS, mm) of the arrays.
        seed: the seed the subject was drawn from.
    """

    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    seed: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def ras_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel-to-world matrix (RAS, mm) of a phantom grid: axis-aligned, field of view centred on 0.

    Args:
        shape: grid size in voxels (X, Y, Z).
        spacing: voxel size in mm (X, Y, Z).
    """
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)]
    return affine


def lps_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorders a RAS-ordered volume to LPS voxel order (as DICOM/ITK-derived files usually are).

    Flips axes 0 and 1 and adjusts the affine so that every voxel keeps its world position.

    Args:
        array: volume in RAS voxel order, spatial axes first.
        affine: its 4x4 RAS voxel-to-world matrix (mm).

    Returns:
        The flipped array and its affine (first two columns negated, origin moved to the old last voxel).
    """
    flip = np.eye(4)
    for axis in (0, 1):
        flip[axis, axis] = -1.0
        flip[axis, 3] = array.shape[axis] - 1
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip


# ---------------------------------------------------------------------------------------------------
# Random fields and geometry helpers
# ---------------------------------------------------------------------------------------------------


def _unit_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], scale_mm: float
) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit variance at every voxel (float32).

    White noise on a coarse lattice (step ``scale_mm``) is spread by a separable Gaussian kernel of the
    same width: three small matrix products instead of a full-resolution filter, so a field costs a
    few milliseconds. Features are roughly ``2 * scale_mm`` mm across.
    """
    weights = []
    for n, step in zip(shape, spacing, strict=True):
        positions = (np.arange(n) - (n - 1) / 2.0) * step
        half = (n - 1) / 2.0 * step + 2.0 * scale_mm
        n_nodes = math.ceil(2.0 * half / scale_mm) + 1
        nodes = np.linspace(-half, half, n_nodes)
        weights.append(
            np.exp(-0.5 * ((positions[:, None] - nodes[None, :]) / scale_mm) ** 2).astype(np.float32)
        )
    coarse = rng.standard_normal(tuple(w.shape[1] for w in weights), dtype=np.float32)
    values = np.tensordot(weights[0], coarse, axes=(1, 0))  # (nx, my, mz)
    values = np.tensordot(values, weights[1], axes=(1, 1))  # (nx, mz, ny)
    values = np.tensordot(values, weights[2], axes=(1, 1))  # (nx, ny, nz)
    # Exact per-voxel standard deviation of the weighted sum, so that the field has unit variance.
    energy = [np.sqrt((w.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32) for w in weights]
    values /= energy[0][:, None, None]
    values /= energy[1][None, :, None]
    values /= energy[2][None, None, :]
    return values


def bias_field(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    strength: float,
    *,
    scale_mm: float = 60.0,
) -> np.ndarray:
    """Smooth multiplicative MR bias field (receive-coil sensitivity): ``exp(strength * field)``, float32.

    ``field`` is a smooth Gaussian random field of unit variance with features about ``2 * scale_mm``
    mm across, so ``strength`` is the standard deviation of the log gain (0.1: about +-10 %).
    """
    return np.exp(np.float32(strength) * _unit_field(rng, shape, spacing, scale_mm))


def rician_magnitude(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude image of ``signal`` with complex Gaussian noise of ``sigma`` (Rician), rounded, float32.

    Real and imaginary channels get independent noise of standard deviation ``sigma``; the
    magnitude is rounded to integers, like a reconstructed MR magnitude image.
    """
    sigma_32 = np.float32(sigma)
    real = signal + sigma_32 * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma_32 * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.rint(np.sqrt(real**2 + imag**2)).astype(np.float32)


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation matrix: roll about A (y), then pitch about R (x), then yaw about S (z); angles in degrees."""
    yaw, pitch, roll = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    ry = np.array([[math.cos(roll), 0, math.sin(roll)], [0, 1, 0], [-math.sin(roll), 0, math.cos(roll)]])
    return rz @ rx @ ry


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _HeadFrame:
    """Head-frame coordinates ``q`` (mm) of every voxel: ``q = R^T (p - centre) + D(p)``.

    ``p`` is the voxel's world position, ``R`` the head's rotation and ``D`` a smooth random
    deformation. Structures are defined in ``q``, so they are rotated and bent together. Small
    structures are evaluated only inside a bounding box of the grid, which is exact because
    ``|p - p_centre| <= radius + max|D|``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        spacing: Sequence[float],
        centre: np.ndarray,
        rotation: np.ndarray,
        warp: Sequence[np.ndarray],
    ) -> None:
        self.shape = tuple(shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.centre = centre
        self.rotation = rotation
        self.axes = [((np.arange(n) - (n - 1) / 2.0) * s) for n, s in zip(shape, spacing, strict=True)]
        rel = [self.axes[0] - centre[0], self.axes[1] - centre[1], self.axes[2] - centre[2]]
        coords = []
        for k in range(3):
            q = (
                (rotation[0, k] * rel[0]).astype(np.float32)[:, None, None]
                + (rotation[1, k] * rel[1]).astype(np.float32)[None, :, None]
                + (rotation[2, k] * rel[2]).astype(np.float32)[None, None, :]
            )
            coords.append(q + warp[k])
        self.qx, self.qy, self.qz = coords
        self.max_warp = float(np.sqrt(warp[0] ** 2 + warp[1] ** 2 + warp[2] ** 2).max())

    def box(self, centre_q: Sequence[float], radius: float) -> tuple[slice, slice, slice] | None:
        """Index box holding every voxel within ``radius`` mm (head frame) of ``centre_q``; None if empty."""
        world = self.rotation @ np.asarray(centre_q, dtype=np.float64) + self.centre
        reach = radius + self.max_warp + float(self.spacing.max())
        slices = []
        for axis in range(3):
            origin = self.axes[axis][0]
            lo = math.floor((world[axis] - reach - origin) / self.spacing[axis])
            hi = math.ceil((world[axis] + reach - origin) / self.spacing[axis]) + 1
            lo, hi = max(lo, 0), min(hi, self.shape[axis])
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
        return tuple(slices)  # type: ignore[return-value]

    def ellipsoid_sdf(
        self,
        box: tuple[slice, slice, slice],
        centre_q: Sequence[float],
        radii: Sequence[float],
        yaw_deg: float = 0.0,
    ) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) to an ellipsoid, over ``box``.

        The ellipsoid may be turned by ``yaw_deg`` about the head's S axis.
        """
        dx = self.qx[box] - centre_q[0]
        dy = self.qy[box] - centre_q[1]
        dz = self.qz[box] - centre_q[2]
        if yaw_deg:
            cos, sin = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
            dx, dy = cos * dx + sin * dy, -sin * dx + cos * dy
        return _ellipsoid_sdf(dx, dy, dz, radii)


def _ellipsoid_sdf(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) to an axis-aligned ellipsoid, first-order approximation.

    ``k0 (k0 - 1) / k1`` with ``k0 = |d / r|`` and ``k1 = |d / r^2|``: exact on the axes and close to the
    surface, which is where layer thicknesses are measured.
    """
    a, b, c = (float(r) for r in radii)
    k0 = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
    k1 = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + (dz / c**2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _paint(
    labels: np.ndarray, box: tuple[slice, slice, slice], where: np.ndarray, value: int, replace: Sequence[int]
) -> None:
    """Sets ``labels[box]`` to ``value`` where ``where`` holds and the current label is in ``replace``."""
    region = labels[box]
    region[where & np.isin(region, replace)] = value


# ---------------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------------


def _head_anatomy(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one head: returns (labels uint8, body mask bool), both in RAS voxel order."""
    # Head outline (semi-axes in mm): breadth 144-162 mm, length 160-174 mm (fits a 192 mm field of view
    # with air around it). The vertex sits 50-60 mm above the centre of the field of view.
    semi_lr, semi_ap, semi_si = rng.uniform(72.0, 81.0), rng.uniform(80.0, 87.0), rng.uniform(88.0, 98.0)
    vertex_z = rng.uniform(50.0, 60.0)
    centre = np.array([rng.uniform(-4.0, 4.0), rng.uniform(-3.0, 3.0), vertex_z - semi_si])
    rotation = _rotation(rng.uniform(-6.0, 6.0), rng.uniform(-6.0, 6.0), rng.uniform(-4.0, 4.0))
    warp = [1.2 * _unit_field(rng, shape, spacing, 30.0) for _ in range(3)]
    frame = _HeadFrame(shape, spacing, centre, rotation, warp)
    qx, qy, qz = frame.qx, frame.qy, frame.qz

    # Egg shape: the back of the head is wider than the forehead.
    egg = rng.uniform(0.03, 0.08)
    qx_egg = qx / (1.0 - egg * qy / semi_ap)
    depth = -_ellipsoid_sdf(qx_egg, qy, qz, (semi_lr, semi_ap, semi_si))  # mm below the skin surface
    below_vertex = semi_si - qz  # mm below the vertex (head frame)

    # Layer thicknesses (mm), each modulated by a smooth random field.
    field_scalp = _unit_field(rng, shape, spacing, 20.0)
    field_skull = _unit_field(rng, shape, spacing, 20.0)
    field_csf = _unit_field(rng, shape, spacing, 20.0)
    t_skin = rng.uniform(1.8, 2.8) * (1.0 + 0.12 * field_scalp)
    t_fat = np.maximum(rng.uniform(2.0, 4.5) * (1.0 + 0.35 * field_scalp), 0.8)
    # Temporal muscle: lateral, above the ears, thickest a little in front of the centre.
    lateral = np.clip((np.abs(qx_egg) / semi_lr - 0.55) / 0.35, 0.0, 1.0) ** 2
    temporal = lateral * np.exp(-(((below_vertex - 85.0) / 28.0) ** 2)) * np.exp(-(((qy - 5.0) / 45.0) ** 2))
    t_muscle = rng.uniform(4.0, 9.0) * temporal
    t_outer = rng.uniform(1.4, 2.2) * (1.0 + 0.2 * field_skull)
    t_diploe = np.maximum(rng.uniform(2.5, 5.0) * (1.0 + 0.35 * field_skull) * (1.0 - 0.6 * temporal), 0.5)
    t_inner = rng.uniform(1.2, 2.0) * (1.0 - 0.2 * field_skull)
    t_csf = np.maximum(rng.uniform(1.2, 3.0) * (1.0 + 0.3 * field_csf), 0.6)

    labels = np.zeros(shape, dtype=np.uint8)
    body = depth > 0
    boundary = t_skin
    labels[body] = SKIN
    for tissue, thickness in (
        (FAT, t_fat),
        (MUSCLE, t_muscle),
        (CORTICAL_BONE, t_outer),
        (MARROW, t_diploe),
        (CORTICAL_BONE, t_inner),
    ):
        labels[depth > boundary] = tissue
        boundary = boundary + thickness
    intracranial = depth > boundary  # inside the inner table of the skull

    # Skull base (mm below the vertex): anterior fossa under the frontal lobes, middle fossa lateral
    # (temporal lobes) with the sphenoid body between them, posterior fossa (cerebellum) lowest.
    base_anterior = rng.uniform(86.0, 94.0)
    base_middle = base_anterior + rng.uniform(22.0, 30.0)
    base_posterior = rng.uniform(128.0, 140.0)
    y_front_step, y_back_step = rng.uniform(18.0, 28.0), rng.uniform(-20.0, -10.0)
    middle = base_anterior + 6.0 + (base_middle - base_anterior - 6.0) * _sigmoid((np.abs(qx) - 22.0) / 4.0)
    # The anterior floor is not flat: it dips at the midline (cribriform plate), sinks towards the
    # back, and undulates (orbital roofs), so that no axial slice cuts it as one large plate.
    anterior = (
        base_anterior
        + rng.uniform(4.0, 8.0) * np.exp(-((qx / 8.0) ** 2))
        + rng.uniform(0.1, 0.25) * np.clip(y_front_step + 40.0 - qy, 0.0, None)
        + 3.0 * field_skull
    )
    skull_base = (
        anterior
        + (middle - anterior) * _sigmoid((y_front_step - qy) / 3.0)
        + (base_posterior - middle) * _sigmoid((y_back_step - qy) / 3.0)
    )
    t_floor = rng.uniform(2.0, 3.5)
    above_base = skull_base - below_vertex  # mm above the skull base (negative below it)
    labels[intracranial & (above_base <= 0) & (above_base > -t_floor)] = CORTICAL_BONE
    labels[intracranial & (above_base <= -t_floor)] = MUSCLE
    cranial = intracranial & (above_base > 0)
    labels[cranial] = CSF

    # Brain: at least one CSF layer away from the inner table and from the skull base.
    brain_depth = np.minimum(depth - boundary, above_base) - t_csf
    brain = cranial & (brain_depth > 0)
    # Cortical folding: sulci are the zero surface of a random field (a random folded sheet), CSF
    # filled down to the sulcal depth and lined with grey matter; white matter lies beneath.
    fold = _unit_field(rng, shape, spacing, rng.uniform(3.5, 4.5))
    grad = np.gradient(fold, *spacing)
    sulcus_distance = np.abs(fold) / np.maximum(np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2), 1e-3)
    sulcus_depth = rng.uniform(8.0, 14.0)
    t_grey = rng.uniform(2.3, 3.2)
    half_sulcus = rng.uniform(0.5, 0.9)
    near_sulcus = brain_depth < sulcus_depth + t_grey
    grey = (brain_depth < t_grey) | (near_sulcus & (sulcus_distance < half_sulcus + t_grey))
    labels[brain] = WHITE_MATTER
    labels[brain & grey] = GREY_MATTER
    labels[brain & (brain_depth < sulcus_depth) & (sulcus_distance < half_sulcus)] = CSF
    # Interhemispheric fissure, slightly curved, from the surface down to the corpus callosum.
    fissure_x = rng.uniform(-1.5, 1.5) * np.sin(qy / 40.0)
    fissure_depth = rng.uniform(25.0, 35.0)
    labels[brain & (np.abs(qx - fissure_x) < rng.uniform(0.7, 1.2)) & (brain_depth < fissure_depth)] = CSF

    _deep_structures(rng, frame, labels, brain, semi_si)
    _face(rng, frame, labels, (semi_lr, semi_ap, semi_si), egg, float(np.mean(t_skin)), float(np.mean(t_fat)))
    return labels, body


def _deep_structures(
    rng: np.random.Generator, frame: _HeadFrame, labels: np.ndarray, brain: np.ndarray, semi_si: float
) -> None:
    """Deep grey nuclei and the ventricular system (random size: from young to atrophic)."""
    level_z = semi_si - rng.uniform(50.0, 58.0)  # head-frame z of the lateral ventricle bodies
    level_y = rng.uniform(-8.0, 0.0)
    size = rng.uniform(0.7, 1.4)
    body_rx = 3.5 * size
    body_x = body_rx + rng.uniform(1.0, 2.5)  # septum pellucidum between the two ventricles
    in_brain = (GREY_MATTER, WHITE_MATTER, CSF)

    def place(centre: Sequence[float], radii: Sequence[float], value: int, yaw: float = 0.0) -> None:
        box = frame.box(centre, max(radii))
        if box is None:
            return
        inside = (frame.ellipsoid_sdf(box, centre, radii, yaw) < 0) & brain[box]
        _paint(labels, box, inside, value, in_brain)

    for side in (1.0, -1.0):
        jitter = rng.uniform(0.9, 1.1, size=3)
        place((side * (body_x + body_rx + 4.0), level_y + 12.0, level_z + 2.0), 4.5 * jitter, GREY_MATTER)
        place((side * 10.0, level_y - 10.0, level_z - 14.0), np.array([8.0, 12.0, 9.0]) * jitter, GREY_MATTER)
        place((side * 24.0, level_y + 4.0, level_z - 12.0), np.array([5.0, 14.0, 10.0]) * jitter, GREY_MATTER)
    for side in (1.0, -1.0):
        # Bodies converge towards the front; atria and occipital horns diverge towards the back.
        place(
            (side * body_x, level_y, level_z),
            (body_rx, rng.uniform(19.0, 25.0), 7.0 * size),
            VENTRICLES,
            yaw=side * rng.uniform(4.0, 10.0),
        )
        place(
            (side * (body_x + 8.0), level_y - 20.0, level_z - 2.0),
            (4.0 * size, 11.0, 6.0 * size),
            VENTRICLES,
            yaw=side * rng.uniform(20.0, 35.0),
        )
        place((side * 28.0, level_y - 5.0, level_z - 28.0), (2.5 * size, 13.0, 3.0 * size), VENTRICLES)
    place((0.0, level_y - 6.0, level_z - 14.0), (1.2 * size, 11.0, 8.0), VENTRICLES)


def _face(
    rng: np.random.Generator,
    frame: _HeadFrame,
    labels: np.ndarray,
    semi_axes: tuple[float, float, float],
    egg: float,
    t_skin: float,
    t_fat: float,
) -> None:
    """Orbits with eyes, and air sinuses in bony shells, in the lower (anterior) head."""
    semi_lr, semi_ap, semi_si = semi_axes

    def front_y(x: float, z: float) -> float:
        """Head-frame y (mm) of the skin surface in front of (x, z), ignoring the small deformation."""
        x_egg = x / (1.0 - egg * 0.8)  # the forehead is narrower (egg shape, y about 0.8 * semi_ap)
        return semi_ap * math.sqrt(max(1.0 - (x_egg / semi_lr) ** 2 - (z / semi_si) ** 2, 0.05))

    def ellipsoid(
        centre: Sequence[float], radii: Sequence[float], margin: float = 0.0
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | tuple[None, None]:
        """Index box around an ellipsoid (plus ``margin`` mm) and its signed distance there."""
        box = frame.box(centre, max(radii) + margin)
        if box is None:
            return None, None
        return box, frame.ellipsoid_sdf(box, centre, radii)

    # Eyes in fatty orbits, the orbits walled by bone except in front.
    eye_z = semi_si - rng.uniform(108.0, 116.0)
    eye_radius = rng.uniform(11.0, 12.5)
    eye_x = rng.uniform(30.0, 34.0)
    eye_y = front_y(eye_x, eye_z) - t_skin - 1.0 - eye_radius
    for side in (1.0, -1.0):
        centre = (side * eye_x * 0.95, eye_y - 6.0, eye_z)
        radii = (eye_radius + 4.0, eye_radius + 12.0, eye_radius + 4.0)
        box, sdf = ellipsoid(centre, radii, margin=2.0)
        if box is None:
            continue
        _paint(labels, box, sdf < 0, FAT, (*_DEEP_TISSUES, FAT))
        behind_eye = frame.qy[box] < eye_y
        _paint(labels, box, (sdf >= 0) & (sdf < 2.0) & behind_eye, CORTICAL_BONE, _DEEP_TISSUES)
        box, sdf = ellipsoid((side * eye_x, eye_y, eye_z), (eye_radius,) * 3)
        if box is not None:
            _paint(labels, box, sdf < 0, EYE, (*_DEEP_TISSUES, FAT))

    cavities: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = []
    if rng.random() < 0.85:  # frontal sinuses are missing in some people
        frontal_z = semi_si - rng.uniform(70.0, 82.0)
        frontal_r = (rng.uniform(8.0, 16.0), rng.uniform(3.0, 6.0), rng.uniform(6.0, 11.0))
        frontal_y = front_y(0.0, frontal_z) - t_skin - t_fat - 3.0 - frontal_r[1]
        cavities.append(((rng.uniform(-3.0, 3.0), frontal_y, frontal_z), frontal_r))
    sphenoid_r = (rng.uniform(8.0, 13.0), rng.uniform(7.0, 11.0), rng.uniform(7.0, 10.0))
    cavities.append(
        ((rng.uniform(-3.0, 3.0), rng.uniform(8.0, 16.0), eye_z + rng.uniform(-2.0, 4.0)), sphenoid_r)
    )
    nasal_centre = (0.0, eye_y - 5.0, eye_z - rng.uniform(18.0, 24.0))
    nasal_r = (rng.uniform(7.0, 10.0), rng.uniform(17.0, 21.0), rng.uniform(16.0, 22.0))
    cavities.append((nasal_centre, nasal_r))
    for side in (1.0, -1.0):
        maxillary_r = (rng.uniform(10.0, 14.0), rng.uniform(13.0, 17.0), rng.uniform(12.0, 16.0))
        centre = (side * rng.uniform(18.0, 24.0), eye_y - 5.0, eye_z - rng.uniform(28.0, 36.0))
        cavities.append((centre, maxillary_r))

    # Ethmoid air cells between the orbits: a honeycomb of small air cells in thin bone.
    orbit_gap = eye_x * 0.95 - eye_radius - 4.0 - 3.0
    ethmoid_centre = (0.0, eye_y - 2.0, eye_z + 2.0)
    ethmoid_r = (min(rng.uniform(8.0, 11.0), orbit_gap), rng.uniform(14.0, 18.0), rng.uniform(10.0, 13.0))
    shell = rng.uniform(1.5, 2.2)
    for centre, radii in [*cavities, (ethmoid_centre, ethmoid_r)]:
        box, sdf = ellipsoid(centre, radii, margin=shell)
        if box is not None:
            _paint(labels, box, sdf < shell, CORTICAL_BONE, _DEEP_TISSUES)
    box, sdf = ellipsoid(ethmoid_centre, ethmoid_r)
    if box is not None:
        cells = _unit_field(rng, sdf.shape, frame.spacing, 2.5) > 0.3
        _paint(labels, box, (sdf < 0) & cells, AIR_CAVITY, _DEEP_TISSUES)
    for centre, radii in cavities:
        box, sdf = ellipsoid(centre, radii)
        if box is not None:
            _paint(labels, box, sdf < 0, AIR_CAVITY, _DEEP_TISSUES)
    # Nasal septum: a thin midline bony plate dividing the nasal cavity.
    box, sdf = ellipsoid(nasal_centre, nasal_r)
    if box is not None:
        septum = (sdf < 0) & (np.abs(frame.qx[box] - rng.uniform(-1.5, 1.5)) < 0.9)
        _paint(labels, box, septum, CORTICAL_BONE, (AIR_CAVITY,))


# ---------------------------------------------------------------------------------------------------
# Image formation
# ---------------------------------------------------------------------------------------------------


def _form_images(
    rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """MR (float32, scanner units) and CT (int16, HU) images of a label map."""
    shape = labels.shape
    mr_lut = np.array([TISSUE_VALUES[k].mr for k in range(_N_LABELS)])
    mr_lut *= 1.0 + 0.05 * rng.standard_normal(_N_LABELS)  # scanner/subject contrast differences
    ct_lut = np.array([rng.uniform(*TISSUE_VALUES[k].ct_range) for k in range(_N_LABELS)])
    ct_lut[VENTRICLES] = ct_lut[CSF]  # the same fluid
    mr_lut[VENTRICLES] = mr_lut[CSF]
    ct_texture_lut = np.array([TISSUE_VALUES[k].ct_texture for k in range(_N_LABELS)])

    # Within-tissue texture: independent in MR and CT (bone density does not show in T1 MR).
    mr = mr_lut.astype(np.float32)[labels] * (1.0 + 0.02 * _unit_field(rng, shape, spacing, 4.0))
    ct = ct_lut.astype(np.float32)[labels] + ct_texture_lut.astype(np.float32)[labels] * _unit_field(
        rng, shape, spacing, 6.0
    )
    mr = ndimage.gaussian_filter(mr, _BLUR_SIGMA_VOXELS, mode="nearest")
    ct = ndimage.gaussian_filter(ct, _BLUR_SIGMA_VOXELS, mode="nearest")

    # Smooth multiplicative bias field (receive-coil sensitivity), global gain, then Rician noise.
    bias = bias_field(rng, shape, spacing, rng.uniform(0.06, 0.12), scale_mm=60.0)
    gain = rng.uniform(0.85, 1.15)
    mr *= bias * np.float32(gain)
    sigma_mr = rng.uniform(0.015, 0.025) * TISSUE_VALUES[WHITE_MATTER].mr * gain
    mr = rician_magnitude(rng, mr, sigma_mr)

    sigma_ct = np.float32(rng.uniform(10.0, 20.0))
    ct += sigma_ct * rng.standard_normal(shape, dtype=np.float32)
    ct = np.clip(np.rint(ct), CT_MIN_HU, CT_MAX_HU).astype(np.int16)
    return mr, ct


def _check_grid(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    try:
        shape_t = tuple(int(n) for n in shape)
        spacing_t = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(
            f"must be 3 numbers; got shape={shape!r}, spacing={spacing!r}", "phantom grid"
        ) from None
    if len(shape_t) != 3 or any(n < 8 for n in shape_t):
        raise ConfigError(f"must be 3 sizes of at least 8 voxels; got {shape!r}", "shape")
    if len(spacing_t) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_t):
        raise ConfigError(f"must be 3 positive voxel sizes in mm; got {spacing!r}", "spacing")
    return shape_t, spacing_t  # type: ignore[return-value]


def _check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"must be a non-negative integer; got {seed!r}", name)
    return int(seed)


def make_head_phantom(
    seed: int,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> PhantomSubject:
    """Draws one synthetic head with perfectly registered MR, CT, body mask and tissue labels.

    Anatomy is in mm, so a coarser ``spacing`` gives the same head at lower resolution and a smaller
    field of view (``shape * spacing``) cuts it like a real scan would. The default grid (192 x 192 mm
    in-plane, 141 mm from the top of the head down to the eyes) holds the whole head with air around
    it. The same seed, shape and spacing give the same subject.

    Args:
        seed: non-negative integer; each seed is a different person.
        shape: grid size in voxels (X, Y, Z), RAS order; each at least 8.
        spacing: voxel size in mm (X, Y, Z).

    Returns:
        The subject; its arrays are in RAS voxel order with ``affine`` = :func:`ras_affine`.

    Raises:
        ConfigError: for a negative or non-integer seed, or an invalid shape or spacing.
    """
    seed = _check_seed(seed)
    shape_t, spacing_t = _check_grid(shape, spacing)
    rng = np.random.default_rng(seed)
    labels, body = _head_anatomy(rng, shape_t, spacing_t)
    mr, ct = _form_images(rng, labels, spacing_t)
    return PhantomSubject(
        mr=mr,
        ct=ct,
        mask=body.astype(np.uint8),
        labels=labels,
        affine=ras_affine(shape_t, spacing_t),
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------
# Dataset on disk
# ---------------------------------------------------------------------------------------------------

_SUBJECT_FILE = re.compile(r"^subj_\d+\.nii\.gz$")
_FOLDERS = (
    "train/mr",
    "train/mr_masks",
    "train/ct",
    "train/ct_masks",
    "test/mr",
    "test/ct",
    "test/masks",
    "test/labels",
    "val/mr",
    "val/ct",
    "val/masks",
)
# Created only for a dataset with validation subjects (n_val > 0); cleaned of stale files always.
_VALIDATION_FOLDERS = ("val/mr", "val/ct", "val/masks")


@dataclass(frozen=True, eq=False)
class SampleDataset:
    """Paths of a phantom dataset written by :func:`write_sample_dataset`.

    Attributes:
        root: the dataset folder.
        train_mr, train_mr_masks: unpaired MR training images (RAS voxel order) and their body masks.
        train_ct, train_ct_masks: unpaired CT training images (LPS voxel order) and their body masks.
        test_mr: test MR images (RAS voxel order).
        test_ct: paired ground-truth CT of the same test subjects (LPS voxel order).
        test_masks, test_labels: body masks and tissue labels of the test subjects, on the CT grid.
        val_mr, val_ct, val_masks: paired MR, CT and body masks (CT grid) of the validation
            subjects, for ``train --val-src/--val-tgt`` (empty without ``n_val``).
        readme: the README.txt describing the data.
        labels_json: ``test/labels.json``, the names of the tissue label values in the layout of an
            nnU-Net v2 ``dataset.json`` (``{"labels": {"background": 0, "skin": 1, ...}}``), for
            ``evaluate --label-names`` and ``augment --labels-json``.
        subject_seeds: subject name (e.g. ``"subj_003"``) -> the seed of :func:`make_head_phantom`.
    """

    root: Path
    train_mr: tuple[Path, ...]
    train_mr_masks: tuple[Path, ...]
    train_ct: tuple[Path, ...]
    train_ct_masks: tuple[Path, ...]
    test_mr: tuple[Path, ...]
    test_ct: tuple[Path, ...]
    test_masks: tuple[Path, ...]
    test_labels: tuple[Path, ...]
    readme: Path
    subject_seeds: dict[str, int] = field(default_factory=dict)
    val_mr: tuple[Path, ...] = ()
    val_ct: tuple[Path, ...] = ()
    val_masks: tuple[Path, ...] = ()
    labels_json: Path | None = None

    @property
    def train_mr_dir(self) -> Path:
        return self.root / "train" / "mr"

    @property
    def train_ct_dir(self) -> Path:
        return self.root / "train" / "ct"

    @property
    def test_mr_dir(self) -> Path:
        return self.root / "test" / "mr"

    @property
    def test_ct_dir(self) -> Path:
        return self.root / "test" / "ct"

    @property
    def test_masks_dir(self) -> Path:
        return self.root / "test" / "masks"

    @property
    def test_labels_dir(self) -> Path:
        return self.root / "test" / "labels"

    @property
    def val_mr_dir(self) -> Path:
        return self.root / "val" / "mr"

    @property
    def val_ct_dir(self) -> Path:
        return self.root / "val" / "ct"

    @property
    def val_masks_dir(self) -> Path:
        return self.root / "val" / "masks"


def subject_seed(dataset_seed: int, subject_index: int) -> int:
    """Seed of subject ``subject_index`` in a dataset drawn with ``dataset_seed`` (independent streams)."""
    sequence = np.random.SeedSequence(entropy=dataset_seed, spawn_key=(subject_index,))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    """Writes one NIfTI-1 file atomically: qform and sform code 1 (scanner), units mm, no scaling."""
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = description.encode("ascii")[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def _check_counts(n_train_mr: int, n_train_ct: int, n_test: int, n_val: int) -> None:
    for name, value, minimum in (
        ("n_train_mr", n_train_mr, 1),
        ("n_train_ct", n_train_ct, 1),
        ("n_test", n_test, 0),
        ("n_val", n_val, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"must be an integer >= {minimum}; got {value!r}", name)


def _check_empty(root: Path, overwrite: bool) -> None:
    """Refuses a file, or a non-empty folder unless ``overwrite`` (the lock file does not count)."""
    if root.exists() and not root.is_dir():
        raise OutputError("exists and is not a folder", root)
    if root.is_dir() and any(p.name != LOCK_FILE for p in root.iterdir()) and not overwrite:
        raise OutputError("folder is not empty; pass --overwrite to write the sample dataset into it", root)


def _prepare_folder(root: Path, overwrite: bool, n_val: int) -> None:
    """Refuses a non-empty folder unless ``overwrite`` (checked again, under the lock); creates the layout.

    The ``val/`` folders are made only for validation subjects: a dataset without them is laid out
    as before they existed.
    """
    _check_empty(root, overwrite)
    try:
        for folder in _FOLDERS:
            if folder in _VALIDATION_FOLDERS and n_val == 0:
                continue
            (root / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the dataset folders ({exc.strerror})", root) from None


def _readme_text(
    n_train_mr: int,
    n_train_ct: int,
    n_test: int,
    n_val: int,
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, ...],
    seeds: dict[str, int],
    groups: dict[str, list[str]],
) -> str:
    fov = " x ".join(f"{n * s:g}" for n, s in zip(shape, spacing, strict=True))
    tissue_rows = "\n".join(
        f"  {value:2d}  {name:<14s} MR {TISSUE_VALUES[value].mr:6.0f}   CT "
        + (
            f"{TISSUE_VALUES[value].ct_range[0]:.0f}"
            if TISSUE_VALUES[value].ct_range[0] == TISSUE_VALUES[value].ct_range[1]
            else f"{TISSUE_VALUES[value].ct_range[0]:.0f}..{TISSUE_VALUES[value].ct_range[1]:.0f}"
        )
        for name, value in TISSUE_LABELS.items()
    )
    val_rows = (
        f"  val/mr/subj_*.nii.gz           {n_val} MR images of validation subjects (train --val-src)\n"
        "  val/ct/subj_*.nii.gz           the paired CT of the same subjects (train --val-tgt)\n"
        "  val/masks/subj_*.nii.gz        body masks of the validation subjects (on the CT grid)\n"
        if n_val
        else ""
    )
    disjoint = (
        "Training MR subjects, training CT subjects, test subjects and validation subjects are disjoint.\n"
        "The validation pairs pick best.pt (validation MAE); the test subjects stay unseen for evaluate."
        if n_val
        else "Training MR subjects, training CT subjects and test subjects are disjoint."
    )
    ct_grid_files = "test and validation masks, labels" if n_val else "test masks and labels"
    seed_rows = "\n".join(
        f"  {name}  {group:<6s} seed {seeds[name]}" for group, names in groups.items() for name in names
    )
    return f"""medcyclegan sample data: synthetic head phantom (MR T1-weighted and CT)
==========================================================================

Generated by medcyclegan {__version__} (medcyclegan.sample_data.write_sample_dataset, seed {seed}).
Entirely synthetic: no patient data, free to use for any purpose.

Each subject is a random head drawn by medcyclegan.sample_data.make_head_phantom(subject_seed):
skin, subcutaneous fat, temporal muscle, skull (cortical tables around diploe/marrow, skull base),
CSF, folded grey-matter cortex, white matter, deep grey nuclei, ventricles, eyes in fatty orbits,
air sinuses and nasal cavity. MR and CT of one subject are perfectly registered.

Grid: {shape[0]} x {shape[1]} x {shape[2]} voxels of {spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} mm \
(field of view {fov} mm), axial slices.

Layout
------
  train/mr/subj_*.nii.gz         {n_train_mr} MR images (domain A) for unpaired training
  train/mr_masks/subj_*.nii.gz   their body masks (uint8 0/1)
  train/ct/subj_*.nii.gz         {n_train_ct} CT images (domain B) of OTHER subjects (unpaired)
  train/ct_masks/subj_*.nii.gz   their body masks
  test/mr/subj_*.nii.gz          {n_test} MR images of held-out subjects
  test/ct/subj_*.nii.gz          the paired ground-truth CT of the same subjects
  test/masks/subj_*.nii.gz       body masks of the test subjects (on the CT grid)
  test/labels/subj_*.nii.gz      tissue label maps of the test subjects (on the CT grid)
  test/labels.json               the names of their values (nnU-Net v2 dataset.json "labels"), for
                                 evaluate --label-names and augment --labels-json
{val_rows}{disjoint}

Values
------
  MR: float32, T1-weighted-like scanner units (about 0..1500, integer-valued), with a smooth
      multiplicative bias field and Rician noise (sigma about 2% of white matter).
  CT: int16, Hounsfield units, clipped to [{CT_MIN_HU}, {CT_MAX_HU}], Gaussian noise 10..20 HU.
  Masks: uint8 0/1 (internal air cavities are inside the body). Labels: uint8, see below.

Orientation (on purpose, to exercise orientation handling)
-----------------------------------------------------------
  MR files (and MR masks) are stored in RAS voxel order, affine diag(+{spacing[0]:g}, +{spacing[1]:g}, \
+{spacing[2]:g}).
  CT files (CT masks, {ct_grid_files}) are stored in LPS voxel order, affine
  diag(-{spacing[0]:g}, -{spacing[1]:g}, +{spacing[2]:g}) with the origin at the opposite corner: the
  arrays are flipped accordingly, so the same anatomy lands at the same world (RAS, mm) coordinates.
  Reorient both to RAS (e.g. nibabel.as_closest_canonical) and MR, CT, masks and labels of a test
  subject match voxel for voxel.
  NIfTI-1, qform and sform codes 1 (scanner), xyz units mm.

Tissue labels (nominal MR before gain/bias/noise; CT range in HU, drawn per subject)
-----------------------------------------------------------------------------------
{tissue_rows}

Subjects: regenerate any in RAS voxel order with
  medcyclegan.sample_data.make_head_phantom(seed, shape={shape}, spacing={spacing})
-----------------------------------------------------------------------------------
{seed_rows}
"""


def write_sample_dataset(
    out_dir: str | Path,
    *,
    n_train_mr: int = 6,
    n_train_ct: int = 6,
    n_test: int = 3,
    seed: int = 0,
    n_val: int = 0,
    overwrite: bool = False,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> SampleDataset:
    """Writes a small unpaired MR/CT training set and a paired test set of phantom heads as NIfTI.

    Training MR and training CT come from disjoint subjects (unpaired, as in real life); test subjects
    are disjoint from both and come with their true CT, body mask and tissue labels. MR is stored in
    RAS voxel order and CT in LPS voxel order (different affines, same world positions). See the
    README.txt written next to the data for the layout.

    Args:
        out_dir: dataset folder; created if missing, refused if it exists and is not empty.
        n_train_mr: number of MR training subjects (at least 1).
        n_train_ct: number of CT training subjects (at least 1).
        n_test: number of paired test subjects (0 or more).
        seed: dataset seed (non-negative); subject seeds are derived from it.
        n_val: number of paired validation subjects (0 or more) in ``val/``, disjoint from the
            others and numbered after the test subjects: the training and test subjects (names,
            seeds, files) are the same whatever ``n_val`` is.
        overwrite: write into a non-empty folder, replacing files of the same names and removing
            ``subj_*.nii.gz`` files of an earlier dataset from the layout's folders.
        shape: grid size in voxels (X, Y, Z) of every subject.
        spacing: voxel size in mm (X, Y, Z).

    Returns:
        The paths written.

    Raises:
        ConfigError: for invalid counts, seed, shape or spacing.
        OutputError: if ``out_dir`` is not empty (without ``overwrite``), is a file, or is unwritable.
    """
    _check_counts(n_train_mr, n_train_ct, n_test, n_val)
    seed = _check_seed(seed)
    shape_t, spacing_t = _check_grid(shape, spacing)
    root = Path(out_dir)
    _check_empty(root, overwrite)  # first without the lock: a refused folder gets no lock file
    # One writer at a time: two runs into one empty folder (other seeds or counts) both passed the
    # emptiness check and mixed their subjects into one dataset.
    with FolderLock(root, holder="sample-data process", place="dataset folder"):
        try:
            return _write_dataset(
                root, n_train_mr, n_train_ct, n_test, n_val, seed, overwrite, shape_t, spacing_t
            )
        finally:
            # The dataset is meant to be shared: no lock file is left in it. Removed while held: a
            # process that opens a new one now finds the folder written (and, without --overwrite,
            # refuses it).
            (root / LOCK_FILE).unlink(missing_ok=True)


def _write_dataset(
    root: Path,
    n_train_mr: int,
    n_train_ct: int,
    n_test: int,
    n_val: int,
    seed: int,
    overwrite: bool,
    shape_t: tuple[int, int, int],
    spacing_t: tuple[float, ...],
) -> SampleDataset:
    """:func:`write_sample_dataset` once its arguments are checked, under the folder's lock."""
    _prepare_folder(root, overwrite, n_val)
    n_before_val = n_train_mr + n_train_ct + n_test
    # The validation group comes last, so the other subjects keep their indices (and seeds).
    groups = {
        "trainMR": [f"subj_{i:03d}" for i in range(n_train_mr)],
        "trainCT": [f"subj_{i:03d}" for i in range(n_train_mr, n_train_mr + n_train_ct)],
        "test": [f"subj_{i:03d}" for i in range(n_train_mr + n_train_ct, n_before_val)],
        "val": [f"subj_{i:03d}" for i in range(n_before_val, n_before_val + n_val)],
    }
    names = [name for group in groups.values() for name in group]
    seeds = {name: subject_seed(seed, index) for index, name in enumerate(names)}
    wanted: dict[str, set[str]] = {folder: set() for folder in _FOLDERS}
    written: dict[str, list[Path]] = {folder: [] for folder in _FOLDERS}

    def save(folder: str, name: str, array: np.ndarray, affine: np.ndarray, what: str) -> None:
        path = root / folder / f"{name}.nii.gz"
        _save_nifti(array, affine, path, f"medcyclegan phantom {what} {name} seed {seeds[name]}")
        wanted[folder].add(path.name)
        written[folder].append(path)

    for group, group_names in groups.items():
        for name in group_names:
            subject = make_head_phantom(seeds[name], shape=shape_t, spacing=spacing_t)
            ct_lps, ct_affine = lps_order(subject.ct, subject.affine)
            mask_lps, _ = lps_order(subject.mask, subject.affine)
            if group == "trainMR":
                save("train/mr", name, subject.mr, subject.affine, "MR T1w")
                save("train/mr_masks", name, subject.mask, subject.affine, "body mask")
            elif group == "trainCT":
                save("train/ct", name, ct_lps, ct_affine, "CT HU")
                save("train/ct_masks", name, mask_lps, ct_affine, "body mask")
            elif group == "val":
                save("val/mr", name, subject.mr, subject.affine, "MR T1w")
                save("val/ct", name, ct_lps, ct_affine, "CT HU")
                save("val/masks", name, mask_lps, ct_affine, "body mask")
            else:
                labels_lps, _ = lps_order(subject.labels, subject.affine)
                save("test/mr", name, subject.mr, subject.affine, "MR T1w")
                save("test/ct", name, ct_lps, ct_affine, "CT HU")
                save("test/masks", name, mask_lps, ct_affine, "body mask")
                save("test/labels", name, labels_lps, ct_affine, "tissue labels")

    # Files of an earlier, larger dataset would silently join this one: remove them (ours only).
    for folder in _FOLDERS:
        if not (root / folder).is_dir():  # val/ of a dataset without validation subjects
            continue
        for stale in sorted((root / folder).iterdir()):
            if _SUBJECT_FILE.match(stale.name) and stale.name not in wanted[folder] and stale.is_file():
                logger.warning("%s: removed, not part of the new sample dataset", stale)
                stale.unlink()

    labels_json = root / "test" / "labels.json"
    atomic_write_text(labels_json, json.dumps({"labels": TISSUE_LABELS}, indent=4) + "\n")
    readme = root / "README.txt"
    atomic_write_text(
        readme, _readme_text(n_train_mr, n_train_ct, n_test, n_val, seed, shape_t, spacing_t, seeds, groups)
    )
    return SampleDataset(
        root=root,
        train_mr=tuple(written["train/mr"]),
        train_mr_masks=tuple(written["train/mr_masks"]),
        train_ct=tuple(written["train/ct"]),
        train_ct_masks=tuple(written["train/ct_masks"]),
        test_mr=tuple(written["test/mr"]),
        test_ct=tuple(written["test/ct"]),
        test_masks=tuple(written["test/masks"]),
        test_labels=tuple(written["test/labels"]),
        labels_json=labels_json,
        readme=readme,
        subject_seeds=seeds,
        val_mr=tuple(written["val/mr"]),
        val_ct=tuple(written["val/ct"]),
        val_masks=tuple(written["val/masks"]),
    )

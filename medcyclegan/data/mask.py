"""Automatic body masks: threshold, keep the body, fill its cavities, dilate slightly.

The mask separates the patient from the air (and from the table, detached noise and labels) so that
MR percentiles, masked losses and slice selection see the body only. Steps:

1. threshold: HU threshold for CT (air is about -1000 HU, soft tissue about 0 HU), Otsu's threshold
   (``skimage.filters.threshold_otsu``) of the log intensities for MR, whose intensities have no unit;
2. keep the largest 3D connected component (face connectivity), dropping noise blobs and the table
   when it does not touch the body;
3. dilate in the axial plane by a few voxels, so that the skin surface is safely inside. The dilation
   is in-plane only because the slice thickness is often several times the in-plane spacing, and
   the mask is used slice by slice;
4. fill holes: in 3D (closed cavities such as the ventricles) and slice by slice in the axial plane
   (cavities such as the sinuses or airways that open to the outside through other slices, but are
   enclosed within each axial slice). Filling after the dilation also fills pockets that the
   dilation encloses.

An empty result (nothing above the threshold) is returned as an all-False mask: the caller decides
what that means (``prepare_volume`` warns and the volume then contributes no training slices).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.filters import threshold_otsu

from medcyclegan import parallel
from medcyclegan.config import MASK_METHODS
from medcyclegan.data.normalise import check_modality_name
from medcyclegan.errors import ConfigError

# Slices per thread at least: below this, threads cost more than they save.
_MIN_RUN_SLICES = 8
# Face connectivity in 3D (symmetric: the same on a transposed array).
_STRUCTURE_3D = ndimage.generate_binary_structure(3, 1)


def _axial_structure(z_axis: int) -> np.ndarray:
    """In-plane face connectivity (and dilation element) for an array whose slice axis is ``z_axis``."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    index: list[slice | int] = [slice(None)] * 3
    index[z_axis] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return structure


def _memory_order(array: np.ndarray) -> tuple[np.ndarray, int]:
    """``array`` (X, Y, Z) as a C-ordered array and the position of its slice axis in it.

    scipy's labelling and morphology run several times faster along memory order: a Fortran-ordered
    volume (as NIfTI files are read) is processed as its C-ordered transpose (Z, Y, X), which needs
    no copy; the masks are transposed back (views again).
    """
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        return array.T, 0
    return np.ascontiguousarray(array), 2


def body_mask(
    array: np.ndarray,
    modality: str,
    *,
    method: str = "auto",
    threshold_hu: float = -500.0,
    dilation: int = 2,
) -> np.ndarray:
    """Automatic body mask of a volume in RAS voxel order.

    Args:
        array: the volume (X, Y, Z) in its natural units (HU for CT), axial slices ``array[:, :, z]``.
        modality: ``"ct"`` or ``"mr"``.
        method: ``"auto"`` (threshold for CT, Otsu for MR), ``"threshold"`` (``array > threshold_hu``,
            in the array's units) or ``"otsu"``.
        threshold_hu: the threshold of the ``"threshold"`` method, HU for CT.
        dilation: in-plane dilation in voxels (0 for none).

    Returns:
        bool array of ``array``'s shape; all False when nothing is above the threshold.
    """
    modality = check_modality_name(modality)
    if method not in MASK_METHODS:
        raise ConfigError(f"mask method must be one of {', '.join(MASK_METHODS)}; got {method!r}")
    if dilation < 0:
        raise ConfigError(f"mask dilation must be >= 0 voxels; got {dilation}")
    if array.ndim != 3:
        raise ValueError(f"body_mask expects a 3D array, got shape {array.shape}")
    if method == "auto":
        method = "threshold" if modality == "ct" else "otsu"
    ordered, z_axis = _memory_order(array)
    foreground = ordered > threshold_hu if method == "threshold" else _otsu_foreground(ordered)
    mask = largest_component(foreground)
    if mask.any():
        if dilation > 0:
            # Filling after the dilation (not before) also fills pockets the dilation encloses, and gives
            # the same result as filling before: a voxel within reach of a hole is within reach of its wall.
            mask = _dilate_axial(mask, z_axis, int(dilation))
        mask = _fill_axial_holes(mask, z_axis)
    return mask if z_axis == 2 else mask.T


def _otsu_foreground(array: np.ndarray) -> np.ndarray:
    """``array`` above Otsu's threshold of its log intensities.

    Otsu on the raw MR values lands between the brightest tissues and the rest and cuts dark tissue
    (bone, CSF, muscle) out of the body; on ``log(1 + (x - min) / unit)``, with ``unit`` a thousandth
    of the 99th-percentile range (scale-free), it separates air noise from tissue. Measured on a
    T1 head (brain1): threshold 388 on raw values (body outline broken), 89 on log values (intact).
    """
    lowest, highest = float(np.min(array)), float(np.max(array))
    if lowest == highest:
        return np.zeros(array.shape, dtype=bool)
    # A strided sample keeps Otsu fast on large volumes; the histogram (256 bins) barely changes.
    step = max(1, int(np.ceil((array.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(array[::step, ::step, ::step], dtype=np.float64) - lowest
    unit = float(np.percentile(sample, 99)) / 1000.0 or (highest - lowest) / 1000.0
    # ravel(): skimage mistakes a volume with 3-4 slices for an RGB image.
    log_threshold = threshold_otsu(np.log1p(sample / unit).ravel())
    return array > lowest + unit * np.expm1(log_threshold)


def largest_component(mask: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The largest face-connected component of a 3D bool mask (all False if the mask is empty).

    On a tie in size, the component whose first voxel comes first in the array's memory order wins,
    as with one ``scipy.ndimage.label`` call. Large masks are labelled in runs along the slowest
    memory axis on several threads and the runs' labels joined across their boundary planes (see
    :func:`_label_runs`); the result is the same as one labelling (tested).

    Args:
        mask: bool (X, Y, Z) array, any memory order.
        threads: worker threads (default :func:`medcyclegan.parallel.worker_threads`).
    """
    ordered, z_axis = _memory_order(mask)
    bounds = parallel.runs(ordered.shape[0], _MIN_RUN_SLICES, threads)
    labels, sizes, offsets, component = _label_runs(ordered, bounds, threads)
    if not len(sizes):
        return np.zeros(mask.shape, dtype=bool)
    # Sizes and first labels of the joined components; the largest, the earliest first on a tie.
    n_components = int(component.max()) + 1
    joined_sizes = np.bincount(component, weights=sizes, minlength=n_components)
    first_label = np.full(n_components, len(sizes), dtype=np.int64)
    np.minimum.at(first_label, component, np.arange(len(sizes)))
    best = int(np.lexsort((first_label, -joined_sizes))[0])
    best_labels = np.flatnonzero(component == best) + 1
    largest = np.empty(ordered.shape, dtype=bool)

    def select(run: int) -> None:
        start, stop = bounds[run]
        run_labels, out = labels[start:stop], largest[start:stop]
        # The body is usually one label per run: comparisons, not a lookup that would widen the labels.
        mine = best_labels[(best_labels > offsets[run]) & (best_labels <= offsets[run + 1])]
        out[...] = False
        for label in mine:
            out |= run_labels == label

    parallel.map_threads(select, len(bounds), threads)
    return largest if z_axis == 2 else largest.T


def _label_runs(
    mask: np.ndarray, bounds: list[tuple[int, int]], threads: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Face-connected labels of a C-ordered mask, computed in runs along axis 0 on several threads.

    Each run of slices is labelled by scipy on its own thread (scipy releases the GIL), its labels
    shifted past the previous runs' and its label sizes counted. Two labels touching across a run
    boundary (the same voxel position in the last plane of one run and the first of the next) belong
    to one component: :func:`scipy.sparse.csgraph.connected_components` joins them.

    Args:
        mask: C-ordered bool array.
        bounds: the runs ``[start, stop)`` along axis 0 (:func:`medcyclegan.parallel.runs`).
        threads: worker threads.

    Returns:
        ``(labels, sizes, offsets, component)``: int32 labels (0 = background, 1..n in memory order
        within each run, runs in order); ``sizes[i]`` the voxel count of label ``i + 1``; run ``r``
        holds labels ``offsets[r] + 1 .. offsets[r + 1]``; ``component[i]`` the joined component of
        label ``i + 1``.
    """
    labels = np.empty(mask.shape, dtype=np.int32)

    def label_run(run: int) -> np.ndarray:
        start, stop = bounds[run]
        out = labels[start:stop]
        count = ndimage.label(mask[start:stop], structure=_STRUCTURE_3D, output=out)
        return _label_sizes(out, count)

    run_sizes = parallel.map_threads(label_run, len(bounds), threads)
    offsets = np.cumsum([0] + [len(s) for s in run_sizes])
    total = int(offsets[-1])

    def shift(run: int) -> None:
        if offsets[run]:
            out = labels[bounds[run][0] : bounds[run][1]]
            np.add(out, np.int32(offsets[run]), out=out, where=out > 0)

    parallel.map_threads(shift, len(bounds), threads)
    sizes = np.concatenate(run_sizes) if total else np.zeros(0, dtype=np.int64)
    pairs = []
    for _, boundary in bounds[:-1]:
        below, above = labels[boundary - 1], labels[boundary]
        touching = (below > 0) & (above > 0)
        pairs.append(np.stack([below[touching], above[touching]]).astype(np.int64) - 1)
    edges = np.unique(np.concatenate(pairs, axis=1), axis=1) if pairs else np.zeros((2, 0), dtype=np.int64)
    graph = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    return labels, sizes, offsets, component


def _label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxel counts of labels 1..count (int64 array of length ``count``).

    Each label is counted inside its own bounding box: noise blobs have tiny boxes, so this reads the
    volume about once, where ``np.bincount`` would first widen all the int32 labels to int64 (about
    1 s for 512 x 512 x 200). Falls back to ``bincount`` when the boxes add up to much more.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = ndimage.find_objects(labels, max_label=count)
    if sum(int(np.prod([s.stop - s.start for s in box])) for box in boxes if box) > 4 * labels.size:
        return np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.int64)
    return np.array(
        [np.count_nonzero(labels[box] == i) if box else 0 for i, box in enumerate(boxes, start=1)],
        dtype=np.int64,
    )


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fills cavities in 3D and, slice by slice, in the axial plane.

    A hole is a background region that does not touch the array border: in 3D for closed cavities,
    and within each axial slice ``[:, :, z]`` for cavities open only through other slices. Equivalent
    to ``scipy.ndimage.binary_fill_holes`` in 3D followed by the same per axial slice, computed with
    one labelling (``binary_fill_holes`` iterates a dilation to convergence, slow on large volumes).
    The 3D fill needs no pass of its own: a cavity closed in 3D is closed within every axial slice it
    crosses (an in-plane way out would be a 3D way out), so the per-slice fill fills it too
    (tested against scipy).
    """
    ordered, z_axis = _memory_order(mask)
    filled = _fill_axial_holes(ordered, z_axis)
    return filled if z_axis == 2 else filled.T


def _per_slab(function: Callable[[np.ndarray], np.ndarray], mask: np.ndarray, z_axis: int) -> np.ndarray:
    """``function`` (a slice-by-slice operation on bool arrays) applied to runs of axial slices on threads.

    Exact for any operation that treats each axial slice on its own (in-plane dilation, per-slice hole
    filling): the runs do not interact.
    """
    bounds = parallel.runs(mask.shape[z_axis], _MIN_RUN_SLICES)
    if len(bounds) == 1:
        return function(mask)
    out = np.empty(mask.shape, dtype=bool)

    def work(run: int) -> None:
        index: list[slice] = [slice(None)] * 3
        index[z_axis] = slice(*bounds[run])
        out[tuple(index)] = function(mask[tuple(index)])

    parallel.map_threads(work, len(bounds))
    return out


def _dilate_axial(mask: np.ndarray, z_axis: int, voxels: int) -> np.ndarray:
    """In-plane binary dilation by ``voxels`` (4-connected steps), slab-parallel."""
    structure = _axial_structure(z_axis)
    return _per_slab(
        lambda run: ndimage.binary_dilation(run, structure=structure, iterations=voxels), mask, z_axis
    )


def _fill_axial_holes(mask: np.ndarray, z_axis: int) -> np.ndarray:
    """Sets to True each background region of each axial slice that touches no in-plane border."""
    return _per_slab(lambda run: _fill_axial_holes_run(run, z_axis), mask, z_axis)


def _fill_axial_holes_run(mask: np.ndarray, z_axis: int) -> np.ndarray:
    labels, count = ndimage.label(~mask, structure=_axial_structure(z_axis))
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for axis in (a for a in range(3) if a != z_axis):
        for index in (0, -1):
            outside[np.unique(np.take(labels, index, axis=axis))] = True
    outside[0] = False  # label 0 is the foreground itself
    return mask | ((labels > 0) & ~outside[labels])

"""The one grid-equality rule (``Geometry.same_grid``) and the one pairing by case name (``pair_by_case``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcyclegan.augment import _check_same_grid as augment_check_same_grid
from medcyclegan.augment import pair_cases
from medcyclegan.config import DataConfig
from medcyclegan.data.prepare import fit_volume
from medcyclegan.errors import InputError
from medcyclegan.evaluate import evaluate
from medcyclegan.io import read_mask, read_volume
from medcyclegan.io.discovery import case_name, pair_by_case
from medcyclegan.io.volume import GRID_TOLERANCE_MM, Geometry
from medcyclegan.train.api import paired_masks

SHAPE = (6, 5, 7)
ORIGIN = np.array([0.0, 0.0, 0.0])


def _affine(
    origin=ORIGIN, spacing=(1.0, 1.0, 2.0), flips=(1.0, 1.0, 1.0), shift_x: float = 0.0
) -> np.ndarray:
    """Voxel-to-world matrix; ``shift_x`` moves the origin along x (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(spacing) * np.asarray(flips))
    affine[:3, 3] = origin
    affine[0, 3] += shift_x
    return affine


def _geometry(affine: np.ndarray, shape=SHAPE) -> Geometry:
    return Geometry(affine, shape, "float32", "nifti")


# ------------------------------------------------------------------------------------------ grid rule


def test_tolerance_is_one_micrometre() -> None:
    assert GRID_TOLERANCE_MM == 1e-3


@pytest.mark.parametrize(
    ("change", "same"),
    [
        (np.zeros((4, 4)), True),
        # At the edge: exactly the tolerance is the same grid, a little more is not.
        (np.array([[0, 0, 0, GRID_TOLERANCE_MM]] + [[0] * 4] * 3), True),
        (np.array([[0, 0, 0, 1.1e-3]] + [[0] * 4] * 3), False),
        # Spacing (the 3x3 part) follows the same absolute rule.
        (np.diag([0.0, 0.9e-3, 0.0, 0.0]), True),
        (np.diag([0.0, 0.0, 1.1e-3, 0.0]), False),
        # A direction change of 0.1 degree moves a 1 mm voxel axis by 1.7e-3 mm.
        (np.array([[0, 0, 0, 0], [np.sin(np.deg2rad(0.1)), 0, 0, 0], [0] * 4, [0] * 4]), False),
    ],
)
def test_same_grid_accepts_rounding_and_refuses_anything_more(change: np.ndarray, same: bool) -> None:
    a = _geometry(_affine())
    b = _geometry(_affine() + change)
    assert a.same_grid(b) is same
    assert b.same_grid(a) is same


def test_the_tolerance_is_absolute_far_from_the_centre() -> None:
    """500 mm from the scanner's centre the rule is the same 1e-3 mm (no relative part)."""
    far = np.array([500.0, -500.0, 500.0])
    a = _geometry(_affine(far))
    assert a.same_grid(_geometry(_affine(far, shift_x=0.9e-3)))
    assert not a.same_grid(_geometry(_affine(far, shift_x=1.5e-3)))
    assert a.affine_difference(_geometry(_affine(far, shift_x=-0.25))) == pytest.approx(0.25)


def test_same_grid_compares_in_ras_voxel_order() -> None:
    """An LPS file and an RAS file over the same voxels are the same grid; the file shapes may differ."""
    ras = _geometry(_affine(origin=(-5.0, -4.0, 0.0)))
    # The same voxels stored with x and y flipped: first voxel at the other corner.
    lps = _geometry(_affine(origin=(0.0, 0.0, 0.0), flips=(-1.0, -1.0, 1.0)))
    assert ras.same_grid(lps)
    permuted = Geometry(ras.affine[:, [1, 0, 2, 3]], (SHAPE[1], SHAPE[0], SHAPE[2]), "float32", "nifti")
    assert ras.same_grid(permuted)


def test_same_grid_refuses_another_shape_and_nan() -> None:
    a = _geometry(_affine())
    assert not a.same_grid(_geometry(_affine(), shape=(6, 5, 5)))
    nan = _affine()
    nan[0, 3] = np.nan
    assert not a.same_grid(Geometry(nan, SHAPE, "float32", "nifti"))


@pytest.mark.parametrize(("offset", "same"), [(0.5e-3, True), (2e-3, False)])
def test_every_caller_follows_the_one_rule(write_nifti, tmp_path: Path, offset: float, same: bool) -> None:
    """read_mask, evaluate, augment's label check and prepare's user mask accept and refuse alike."""
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    ct[0] = -1000
    ref_path = write_nifti("ref.nii.gz", ct, _affine())
    other_path = write_nifti("other.nii.gz", np.ones(SHAPE, np.uint8), _affine(shift_x=offset))
    ref, other = read_volume(ref_path), read_volume(other_path)

    def outcome(call) -> bool:
        try:
            call()
        except InputError:
            return False
        return True

    results = {
        "read_mask": outcome(lambda: read_mask(other_path, like=ref.geometry)),
        "evaluate": outcome(
            lambda: evaluate(write_nifti("pred.nii.gz", ct, _affine(shift_x=offset)), ref_path)
        ),
        "augment": outcome(
            lambda: augment_check_same_grid(ref_path, ref.geometry, other_path, other.geometry)
        ),
        "prepare": outcome(lambda: fit_volume(ref, "ct", DataConfig(), mask=other)),
    }
    assert results == dict.fromkeys(results, same)


# -------------------------------------------------------------------------------------------- pairing


def test_pair_by_case_pairs_in_source_order_and_lists_the_rest() -> None:
    sources = [Path("mr/b.nii.gz"), Path("mr/a.nrrd"), Path("mr/only_mr.mha")]
    targets = [Path("ct/a.nii.gz"), Path("ct/only_ct.nii"), Path("ct/b.nii.gz")]
    pairing = pair_by_case(sources, targets)
    assert pairing.pairs == [("b", sources[0], targets[2]), ("a", sources[1], targets[0])]
    assert pairing.unmatched_sources == [sources[2]]
    assert pairing.unmatched_targets == [targets[1]]
    assert pairing.duplicate_source is None and pairing.duplicate_target is None


def test_pair_by_case_reports_the_first_duplicate_of_each_side() -> None:
    sources = [Path("x/a.nii.gz"), Path("y/a.nii.gz"), Path("z/a.nrrd")]
    targets = [Path("p/a.nii"), Path("q/a.mha")]
    pairing = pair_by_case(sources, targets)
    assert pairing.duplicate_source == ("a", sources[0], sources[1])
    assert pairing.duplicate_target == ("a", targets[0], targets[1])
    # Every source is paired, always with the first target of that name.
    assert [(s, t) for _, s, t in pairing.pairs] == [(s, targets[0]) for s in sources]


def test_pair_by_case_takes_any_items_with_a_name() -> None:
    """The trainer's validation volumes: prepared volumes named by their source file."""

    class Prepared:
        def __init__(self, source: str, shape: tuple[int, ...]) -> None:
            self.source, self.shape = source, shape

    src = [Prepared("val/mr/case1.nii.gz", (4, 4, 2)), Prepared("val/mr/case2.nii.gz", (4, 4, 2))]
    tgt = [Prepared("val/ct/case2.nii.gz", (4, 4, 3)), Prepared("val/ct/case1.nii.gz", (4, 4, 2))]
    pairing = pair_by_case(src, tgt, name=lambda v: case_name(v.source))
    kept = [(s, t) for _, s, t in pairing.pairs if s.shape == t.shape]
    assert kept == [(src[0], tgt[1])]


def test_callers_word_duplicates_and_unmatched_cases_for_their_inputs(write_nifti, tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.int16)
    for name in ("images/a", "images/sub/a", "labels/a"):
        write_nifti(f"{name}.nii.gz", image)
    with pytest.raises(InputError, match=r"two volumes are named 'a': .*images/a.nii.gz and .*sub/a.nii.gz"):
        pair_cases(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(InputError, match=r"case 'a' appears twice: "):
        evaluate(tmp_path / "images", tmp_path / "labels")
    write_nifti("masks/a.nii.gz", image)
    write_nifti("masks/b/a.nrrd.nii.gz", image)  # named "a.nrrd": not a duplicate
    volumes = [tmp_path / "labels/a.nii.gz"]
    assert paired_masks(volumes, tmp_path / "masks") == [tmp_path / "masks/a.nii.gz"]
    write_nifti("masks/b/a.nii.gz", image)
    with pytest.raises(InputError, match=r"two masks are named 'a': "):
        paired_masks(volumes, tmp_path / "masks")
    with pytest.raises(InputError, match=r"no mask for 1 volume\(s\): c"):
        paired_masks([tmp_path / "labels/c.nii.gz"], tmp_path / "labels")

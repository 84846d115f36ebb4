"""Panels per case: layout, orientation, windows, square pixels, and `evaluate --figures` (writing rules, MR pairing)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcyclegan.errors import InputError, OutputError
from medcyclegan.figures import (
    BEST_COLOUR,
    BONE_WINDOW_HU,
    CURVE_COLOUR,
    PLANES,
    SOFT_TISSUE_WINDOW_HU,
    case_panel,
    comparison_panel,
    display_slice,
    pixel_size_mm,
    window,
    write_validation_curve,
)

SHAPE = (40, 44, 12)  # R, A, S voxels
SPACING = (2.0, 2.0, 4.0)  # mm: slices thicker than the in-plane pixels
AFFINE = np.diag([*SPACING, 1.0])


def _head() -> tuple[np.ndarray, np.ndarray]:
    """A soft-tissue box (40 HU) in air with a bone cube (1000 HU) at the patient's right-anterior; its mask."""
    ct = np.full(SHAPE, -1000.0, dtype=np.float32)
    ct[4:36, 4:40, 2:10] = 40.0
    ct[26:34, 30:38, 4:8] = 1000.0  # high x = right, high y = anterior (RAS), around the centre slice
    return ct, ct > -500


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(array).astype(np.int16), affine).to_filename(path)
    return path


def _one_error_line(result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_display_slice_is_radiological() -> None:
    """Axial (R, A): right on the image's left, anterior up; sagittal (A, S): anterior left, superior up."""
    axial = np.zeros((3, 2))
    axial[2, 1] = 1  # most right (x high), most anterior (y high)
    assert display_slice(axial)[0, 0] == 1
    sagittal = np.zeros((3, 2))
    sagittal[2, 1] = 1  # most anterior, most superior
    assert display_slice(sagittal)[0, 0] == 1


def test_window_maps_the_range_to_grey() -> None:
    assert window(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]), *SOFT_TISSUE_WINDOW_HU).tolist() == [
        0,
        0,
        128,
        255,
        255,
    ]
    low, high = BONE_WINDOW_HU
    assert (high - low, (high + low) / 2) == (1800.0, 400.0)  # W1800 L400
    assert (SOFT_TISSUE_WINDOW_HU[1] - SOFT_TISSUE_WINDOW_HU[0], sum(SOFT_TISSUE_WINDOW_HU) / 2) == (
        400.0,
        40.0,
    )


def test_panel_layout_square_pixels_orientation_and_windows() -> None:
    ct, mask = _head()
    mr = np.where(mask, 500.0 - ct / 4, 0.0)
    panel = case_panel(ct, ct + 100.0, mask, SPACING, mr=mr, title="case: test")

    assert panel.rows == list(PLANES)
    assert [c.split("\n")[0] for c in panel.columns] == [
        "MR",
        "synthetic CT",
        "CT",
        "synthetic CT",
        "CT",
        "|synthetic CT - CT|",
    ]
    assert "W400 L40" in panel.columns[1] and "W1800 L400" in panel.columns[3]
    assert "0-500 HU" in panel.columns[5]
    assert set(panel.boxes) == {(plane, column) for plane in PLANES for column in range(6)}
    # One square pixel size for every tile: each tile spans its field of view in mm.
    pixel = panel.pixel_mm
    assert pixel == pytest.approx(pixel_size_mm(SHAPE, SPACING))
    extent = {
        "axial": (SHAPE[0] * 2.0, SHAPE[1] * 2.0),
        "coronal": (SHAPE[0] * 2.0, SHAPE[2] * 4.0),
        "sagittal": (SHAPE[1] * 2.0, SHAPE[2] * 4.0),
    }
    for plane, (width_mm, height_mm) in extent.items():
        _, _, width, height = panel.boxes[plane, 2]
        assert (width, height) == (round(width_mm / pixel), round(height_mm / pixel)), plane
    image = panel.image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3

    def tile(plane: str, column: int) -> np.ndarray:
        left, top, width, height = panel.boxes[plane, column]
        return image[top : top + height, left : left + width, 0]

    # The bone cube (patient's right, anterior) lies in the top-left quarter of the axial CT tile.
    axial = tile("axial", 2)
    rows, cols = np.nonzero(axial == 255)
    assert rows.mean() < axial.shape[0] / 2 and cols.mean() < axial.shape[1] / 2
    # Soft tissue (40 HU) is mid-grey in the soft-tissue window; in the bone window it is darker.
    centre = axial[axial.shape[0] // 2, axial.shape[1] // 2]
    assert centre == 128
    assert tile("axial", 4)[axial.shape[0] // 2, axial.shape[1] // 2] == window(
        np.array(40.0), *BONE_WINDOW_HU
    )
    # The synthetic CT is 100 HU brighter: 40 + 100 HU in the soft-tissue window.
    assert tile("axial", 1)[axial.shape[0] // 2, axial.shape[1] // 2] == window(
        np.array(140.0), *SOFT_TISSUE_WINDOW_HU
    )
    # Without an MR the first column is the synthetic CT.
    assert case_panel(ct, ct, mask, SPACING).columns[0].startswith("synthetic CT")


def test_panel_is_deterministic() -> None:
    ct, mask = _head()
    first = case_panel(ct, ct + 50.0, mask, SPACING, title="a").image
    second = case_panel(ct, ct + 50.0, mask, SPACING, title="a").image
    assert np.array_equal(first, second)


def test_panel_refuses_volumes_of_other_shapes() -> None:
    ct, mask = _head()
    with pytest.raises(ValueError, match="one shape"):
        case_panel(ct, ct[:-1], mask, SPACING)


# --------------------------------------------------------------------------- evaluate --figures
def _case_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ct, mask = _head()
    ref = _save(tmp_path / "ct" / "p1.nii.gz", ct)
    pred = _save(tmp_path / "sct" / "p1.nii.gz", ct + 100.0)
    mr = _save(tmp_path / "mr" / "p1.nii.gz", np.where(mask, 500.0 - ct / 4, 0.0))
    return pred, ref, mr


def test_cli_writes_one_panel_per_case_deterministically(cli, tmp_path: Path) -> None:
    pred, ref, mr = _case_files(tmp_path)
    figures = tmp_path / "figures"
    result = cli(
        "evaluate", "--pred", pred.parent, "--ref", ref.parent, "--source", mr.parent, "--figures", figures
    )
    assert result.code == 0, result.err
    assert f"1 panel(s) written to {figures}" in result.out
    png = figures / "p1.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
    assert width > 6 * 200 and height > 3 * 100  # six columns of tiles, three rows
    first = png.read_bytes()
    again = cli(
        "evaluate",
        "--pred",
        pred,
        "--ref",
        ref,
        "--source",
        mr,
        "--figures",
        tmp_path / "again",
        "--overwrite",
    )
    assert again.code == 0, again.err
    assert (tmp_path / "again" / "p1.png").read_bytes() == first  # the same panel, byte for byte


def test_cli_refuses_to_replace_a_panel_without_overwrite(cli, tmp_path: Path, monkeypatch) -> None:
    import medcyclegan.evaluate

    pred, ref, _ = _case_files(tmp_path)
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "p1.png").write_bytes(b"user's picture")
    computed = []
    monkeypatch.setattr(medcyclegan.evaluate, "compute_metrics", lambda *a: computed.append(a))
    line = _one_error_line(cli("evaluate", "--pred", pred, "--ref", ref, "--figures", figures))
    assert line == f"error: {figures / 'p1.png'}: already exists; pass --overwrite to replace it"
    assert computed == []  # refused before any metric
    assert (figures / "p1.png").read_bytes() == b"user's picture"
    monkeypatch.undo()
    assert cli("evaluate", "--pred", pred, "--ref", ref, "--figures", figures, "--overwrite").code == 0
    assert (figures / "p1.png").read_bytes().startswith(b"\x89PNG")


def test_cli_refuses_an_mr_on_another_grid(cli, tmp_path: Path) -> None:
    pred, ref, _ = _case_files(tmp_path)
    ct, _ = _head()
    shifted = np.diag([*SPACING, 1.0])
    shifted[0, 3] = 5.0
    mr = _save(tmp_path / "mr_shifted" / "p1.nii.gz", ct, shifted)
    line = _one_error_line(
        cli("evaluate", "--pred", pred, "--ref", ref, "--source", mr, "--figures", tmp_path / "f")
    )
    assert line.startswith(f"error: {mr}: voxel grid differs from {ref}: affines differ by up to 5 mm")
    assert "resample the MR onto the reference grid" in line
    assert not (tmp_path / "f" / "p1.png").exists()


def test_cli_refuses_an_mr_folder_without_the_case(cli, tmp_path: Path) -> None:
    pred, ref, _ = _case_files(tmp_path)
    ct, _ = _head()
    other = _save(tmp_path / "mr_other" / "p2.nii.gz", ct)
    line = _one_error_line(
        cli(
            "evaluate",
            "--pred",
            pred.parent,
            "--ref",
            ref.parent,
            "--source",
            other.parent,
            "--figures",
            tmp_path / "f",
        )
    )
    assert line == f"error: {other.parent}: no MR for case(s): p1"


def test_cli_source_needs_figures(cli, tmp_path: Path) -> None:
    pred, ref, mr = _case_files(tmp_path)
    line = _one_error_line(cli("evaluate", "--pred", pred, "--ref", ref, "--source", mr))
    assert "--figures" in line


def test_cli_figures_folder_that_is_a_file(cli, tmp_path: Path) -> None:
    pred, ref, _ = _case_files(tmp_path)
    (tmp_path / "taken").write_text("x")
    line = _one_error_line(cli("evaluate", "--pred", pred, "--ref", ref, "--figures", tmp_path / "taken"))
    assert line == f"error: {tmp_path / 'taken'}: is a file; --figures needs a folder"


def test_panel_draws_with_an_old_pillow_without_font_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow < 10.1 has no ``load_default(size=...)``: the labels fall back to its bitmap font."""
    from PIL import ImageFont

    original = ImageFont.load_default

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    ct, mask = _head()
    panel = case_panel(ct, ct, mask, SPACING, title="old Pillow")
    assert panel.image.shape[2] == 3 and set(panel.boxes) == {(p, c) for p in PLANES for c in range(5)}


def test_a_long_title_widens_the_panel_instead_of_being_cut() -> None:
    ct, mask = _head()
    short = case_panel(ct, ct, mask, SPACING, title="t").image
    long = case_panel(ct, ct, mask, SPACING, title="a very long title " * 40).image
    assert long.shape[1] > short.shape[1] > 1000


# ---------------------------------------------------------------------------------------------------
# Validation curve (val_metrics.csv against training time)
# ---------------------------------------------------------------------------------------------------

VAL_LOG = """step,epoch,train_seconds,val/cycle_ssim,val/mae
10,0,4.5,0.61,310.5
20,1,9.1,0.70,240.25
30,2,13.8,0.74,201.0
40,3,18.2,0.75,205.75
"""


def test_the_validation_curve_marks_the_best_validation(tmp_path: Path) -> None:
    log = tmp_path / "val_metrics.csv"
    log.write_text(VAL_LOG)
    curve = write_validation_curve(tmp_path / "figures" / "val_mae.png", log, unit="HU", size=(640, 400))
    assert curve.x_column == "train_seconds" and curve.best == (13.8, 30, 201.0)
    assert [p[1] for p in curve.points] == [10, 20, 30, 40]
    with Image.open(tmp_path / "figures" / "val_mae.png") as image:
        assert image.format == "PNG" and image.size == (640, 400)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c) for c in p) for p in pixels}
    assert CURVE_COLOUR in colours and BEST_COLOUR in colours
    # The higher-is-better metric of the same log: its best is the last validation.
    ssim = write_validation_curve(tmp_path / "ssim.png", log, metric="val/cycle_ssim", mode="max")
    assert ssim.best[1] == 40
    with pytest.raises(OutputError, match="--overwrite"):
        write_validation_curve(tmp_path / "ssim.png", log, metric="val/cycle_ssim")


def test_a_log_before_the_training_clock_is_drawn_against_steps(tmp_path: Path) -> None:
    rows = [{"step": "5", "epoch": "0", "val/mae": "300"}, {"step": "10", "epoch": "1", "val/mae": "nan"}]
    curve = write_validation_curve(tmp_path / "old.png", rows)
    assert curve.x_column == "step" and curve.points == [(5.0, 5, 300.0)]


def test_a_log_without_the_metric_is_one_clear_line(tmp_path: Path) -> None:
    log = tmp_path / "val_metrics.csv"
    log.write_text("step,epoch,train_seconds,val/cycle_ssim\n10,0,4.5,0.61\n")
    with pytest.raises(
        InputError, match=r"val_metrics\.csv: no validation row has a value of val/mae; the columns"
    ):
        write_validation_curve(tmp_path / "c.png", log)
    log.write_text("")
    with pytest.raises(InputError, match="holds no validation row"):
        write_validation_curve(tmp_path / "c.png", log)
    assert not (tmp_path / "c.png").exists()


def test_the_comparison_panel_has_a_row_per_model_and_their_own_errors() -> None:
    ct, mask = _head()
    mr = np.where(mask, 500.0 - ct / 4, 0.0)
    synthetic = {"exact": ct.copy(), "plus 100 HU": ct + 100.0, "plus 600 HU": ct + 600.0}
    panel = comparison_panel(ct, synthetic, mask, SPACING, mr=mr, title="case: test")
    assert panel.rows == list(synthetic)
    assert set(panel.boxes) == {(row, column) for row in synthetic for column in range(6)}
    assert panel.columns == case_panel(ct, ct, mask, SPACING, mr=mr).columns

    def tile(row: str, column: int) -> np.ndarray:
        left, top, width, height = panel.boxes[row, column]
        return panel.image[top : top + height, left : left + width]

    # Same axial slice as the case panel's, so its tiles agree with the case panel's axial row.
    single = case_panel(ct, ct + 100.0, mask, SPACING, mr=mr)
    left, top, width, height = single.boxes["axial", 1]
    assert np.array_equal(tile("plus 100 HU", 1), single.image[top : top + height, left : left + width])
    # The error column is each row's own: black where exact, brighter for a larger error.
    errors = [float(tile(row, 5)[..., 0].mean()) for row in synthetic]
    assert errors[0] == 0.0 and errors[0] < errors[1] < errors[2]
    # The MR and CT columns are the same in every row.
    assert np.array_equal(tile("exact", 0), tile("plus 600 HU", 0))
    assert np.array_equal(tile("exact", 2), tile("plus 600 HU", 2))
    with pytest.raises(ValueError, match="at least one"):
        comparison_panel(ct, {}, mask, SPACING)
    with pytest.raises(ValueError, match="plane must be one of"):
        comparison_panel(ct, synthetic, mask, SPACING, plane="oblique")
    with pytest.raises(ValueError, match="one shape"):
        comparison_panel(ct, {"bad": ct[:-1]}, mask, SPACING)

"""evaluate(): pairing of files and folders, grid checks, masks, reports (JSON, CSV, table)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.evaluate import EvaluationReport, evaluate
from medcyclegan.metrics import BODY_MASK_METHOD, synthrad2023, synthrad2025, synthrad_body_mask

SHAPE = (16, 14, 10)


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype: type = np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(array).astype(dtype), np.eye(4) if affine is None else affine).to_filename(
        path
    )
    return path


def _phantom(seed: int = 0) -> np.ndarray:
    """Air around a textured box 'body' (HU), integer-valued like real CT."""
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000.0)
    ct[3:13, 3:11, 2:8] = rng.normal(40, 200, size=(10, 8, 6)).round()
    return ct


def _box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:14, 2:12, 1:9] = True
    return mask


# --------------------------------------------------------------------------- single files
def test_single_files_with_mask_file(tmp_path: Path) -> None:
    ref = _phantom()
    pred = ref + 25.0  # MAE exactly 25 HU in any mask
    mask = _box_mask()
    ref_path = _save(tmp_path / "ref" / "p1.nii.gz", ref)
    pred_path = _save(tmp_path / "pred" / "p1.nii.gz", pred)
    mask_path = _save(tmp_path / "mask" / "p1.nii.gz", mask, dtype=np.uint8)

    report = evaluate(pred_path, ref_path, mask_path)

    assert isinstance(report, EvaluationReport)
    assert report.standard == "synthrad2023"
    assert [case.case for case in report.cases] == ["p1"]
    case = report.cases[0]
    assert case.mask_source == f"file: {mask_path}"
    assert case.pred == str(pred_path) and case.ref == str(ref_path)
    assert case.metrics["mae"] == pytest.approx(25.0)
    assert case.metrics["psnr"] == pytest.approx(10 * math.log10(4024.0**2 / 25.0**2))
    assert case.metrics == pytest.approx(synthrad2023(pred, ref, mask))
    assert report.metadata["data_range"] == 4024.0
    assert report.metadata["clip_range_hu"] == [-1024.0, 3000.0]


def test_computed_mask_is_recorded_and_used(tmp_path: Path) -> None:
    ref = _phantom(1)
    pred = _phantom(2)
    ref_path = _save(tmp_path / "ref.nii.gz", ref)
    pred_path = _save(tmp_path / "pred.nii.gz", pred)

    report = evaluate(pred_path, ref_path)

    case = report.cases[0]
    assert (
        case.mask_source == BODY_MASK_METHOD == "computed from reference (Otsu, dilation, closing, dilation)"
    )
    assert case.metrics == pytest.approx(synthrad2023(pred, ref, synthrad_body_mask(ref)))


def test_synthrad2025_standard(tmp_path: Path) -> None:
    ref = _phantom(3)
    pred = ref + np.random.default_rng(4).normal(0, 30, size=SHAPE).round()
    mask = _box_mask()
    ref_path = _save(tmp_path / "r" / "c.nii.gz", ref)
    pred_path = _save(tmp_path / "p" / "c.nii.gz", pred)
    mask_path = _save(tmp_path / "m" / "c.nii.gz", mask, dtype=np.uint8)

    report = evaluate(pred_path, ref_path, mask_path, standard="synthrad2025")

    assert set(report.cases[0].metrics) == {"mae", "psnr", "ms_ssim"}
    assert report.cases[0].metrics == pytest.approx(synthrad2025(pred, ref, mask))
    assert report.metadata["data_range"] == 4095.0


def test_unknown_standard_fails_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown standard 'synthrad'"):
        evaluate(tmp_path / "missing_pred", tmp_path / "missing_ref", standard="synthrad")


def test_missing_path_and_file_folder_mix(tmp_path: Path) -> None:
    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "nothing.nii.gz", ref_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"is a folder of cases but .*ref\.nii\.gz is a single volume"):
        evaluate(tmp_path / "folder", ref_path)


# --------------------------------------------------------------------------- folders
def _make_folders(tmp_path: Path, offsets: dict[str, float]) -> tuple[Path, Path, Path]:
    pred_dir, ref_dir, mask_dir = tmp_path / "pred", tmp_path / "ref", tmp_path / "mask"
    for index, (name, offset) in enumerate(offsets.items()):
        ref = _phantom(index)
        _save(ref_dir / f"{name}.nii.gz", ref)
        _save(pred_dir / f"{name}.nii.gz", ref + offset)
        _save(mask_dir / f"{name}.nii.gz", _box_mask(), dtype=np.uint8)
    return pred_dir, ref_dir, mask_dir


def test_folders_are_paired_by_case_name(tmp_path: Path) -> None:
    pred_dir, ref_dir, mask_dir = _make_folders(tmp_path, {"case_b": 20.0, "case_a": 10.0, "case_c": 60.0})

    report = evaluate(pred_dir, ref_dir, mask_dir)

    assert [case.case for case in report.cases] == ["case_a", "case_b", "case_c"]
    for case, expected in zip(report.cases, (10.0, 20.0, 60.0), strict=True):
        assert case.metrics["mae"] == pytest.approx(expected)
        assert Path(case.pred).parent == pred_dir and Path(case.ref).parent == ref_dir
        assert Path(case.pred).name == Path(case.ref).name
        assert case.mask_source == f"file: {mask_dir / (case.case + '.nii.gz')}"


def test_summary_statistics_by_hand(tmp_path: Path) -> None:
    pred_dir, ref_dir, mask_dir = _make_folders(tmp_path, {"a": 10.0, "b": 20.0, "c": 60.0})
    summary = evaluate(pred_dir, ref_dir, mask_dir).summary["mae"]
    # mean 30; deviations -20, -10, 30 -> population variance (400 + 100 + 900) / 3
    assert summary["mean"] == pytest.approx(30.0)
    assert summary["std"] == pytest.approx(math.sqrt(1400.0 / 3.0))
    assert summary["median"] == pytest.approx(20.0)
    assert summary["n"] == 3


def test_unmatched_cases_are_listed(tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = _make_folders(tmp_path, {"a": 1.0, "b": 2.0})
    _save(pred_dir / "extra_pred.nii.gz", _phantom())
    _save(ref_dir / "lonely_ref.nii.gz", _phantom())
    with pytest.raises(InputError, match="2 unmatched") as info:
        evaluate(pred_dir, ref_dir)
    message = str(info.value)
    assert "extra_pred" in message and "lonely_ref" in message
    assert "a," not in message and ": a" not in message


def test_missing_mask_in_mask_folder(tmp_path: Path) -> None:
    pred_dir, ref_dir, mask_dir = _make_folders(tmp_path, {"a": 1.0, "b": 2.0})
    (mask_dir / "b.nii.gz").unlink()
    with pytest.raises(InputError, match=r"no mask for case.*: b"):
        evaluate(pred_dir, ref_dir, mask_dir)


def test_single_mask_file_with_folders_is_refused(tmp_path: Path) -> None:
    pred_dir, ref_dir, mask_dir = _make_folders(tmp_path, {"a": 1.0})
    with pytest.raises(InputError, match="single mask file"):
        evaluate(pred_dir, ref_dir, mask_dir / "a.nii.gz")


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    with pytest.raises(InputError, match="no volumes found"):
        evaluate(tmp_path / "p", tmp_path / "r")


# --------------------------------------------------------------------------- grids
def test_grid_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    pred_path = _save(tmp_path / "pred.nii.gz", _phantom()[:, :, :-1])
    with pytest.raises(InputError, match="grid differs") as info:
        evaluate(pred_path, ref_path)
    assert str(pred_path) in str(info.value) and str(ref_path) in str(info.value)


def test_grid_affine_mismatch_names_both_files(tmp_path: Path) -> None:
    shifted = np.eye(4)
    shifted[:3, 3] = [0.5, 0.0, 0.0]  # half a voxel: a real misalignment
    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    pred_path = _save(tmp_path / "pred.nii.gz", _phantom(), affine=shifted)
    with pytest.raises(InputError, match=r"affines differ by up to 0\.5 mm") as info:
        evaluate(pred_path, ref_path)
    assert str(pred_path) in str(info.value) and str(ref_path) in str(info.value)


def test_same_grid_in_another_voxel_order_is_accepted(tmp_path: Path) -> None:
    """A prediction stored LPS on the same world grid as an RAS reference gives the same numbers."""
    ref = _phantom(5)
    pred = ref + np.random.default_rng(6).normal(0, 40, size=SHAPE).round()
    lps_affine = np.array(
        [[-1.0, 0, 0, SHAPE[0] - 1], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]]
    )
    ref_path = _save(tmp_path / "ref.nii.gz", ref)
    ras_path = _save(tmp_path / "ras" / "pred.nii.gz", pred)
    lps_path = _save(tmp_path / "lps" / "pred.nii.gz", pred[::-1, ::-1, :], affine=lps_affine)
    mask_path = _save(tmp_path / "mask.nii.gz", _box_mask(), dtype=np.uint8)

    from_ras = evaluate(ras_path, ref_path, mask_path).cases[0].metrics
    from_lps = evaluate(lps_path, ref_path, mask_path).cases[0].metrics
    assert from_lps == pytest.approx(from_ras, rel=1e-12)


def test_empty_mask_file_is_an_error(tmp_path: Path) -> None:
    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    pred_path = _save(tmp_path / "pred.nii.gz", _phantom())
    mask_path = _save(tmp_path / "mask.nii.gz", np.zeros(SHAPE), dtype=np.uint8)
    with pytest.raises(InputError, match="mask is empty"):
        evaluate(pred_path, ref_path, mask_path)


# --------------------------------------------------------------------------- reports
@pytest.fixture
def report(tmp_path: Path) -> EvaluationReport:
    pred_dir, ref_dir, mask_dir = _make_folders(tmp_path / "data", {"a": 10.0, "b": 20.0, "c": 60.0})
    return evaluate(pred_dir, ref_dir, mask_dir)


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_and_csv_contents(report: EvaluationReport, tmp_path: Path) -> None:
    json_path, csv_path = report.write(tmp_path / "out" / "eval.json")
    assert csv_path == tmp_path / "out" / "eval.csv"

    data = _strict_json(json_path.read_text())
    assert data["standard"] == "synthrad2023"
    assert data["metadata"]["data_range"] == 4024.0
    assert data["metadata"]["clip_range_hu"] == [-1024.0, 3000.0]
    assert [case["case"] for case in data["cases"]] == ["a", "b", "c"]
    assert data["cases"][1]["metrics"]["mae"] == pytest.approx(20.0)
    assert data["cases"][0]["mask_source"].startswith("file: ")
    assert data["summary"]["mae"]["mean"] == pytest.approx(30.0)
    assert data["summary"]["ssim"]["n"] == 3

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["a", "b", "c"]
    assert [float(row["mae"]) for row in rows] == pytest.approx([10.0, 20.0, 60.0])
    assert float(rows[2]["psnr"]) == pytest.approx(report.cases[2].metrics["psnr"], rel=1e-15)
    assert rows[0]["data_range"] == "4024.0" and rows[0]["clip_min_hu"] == "-1024.0"
    assert rows[0]["clip_max_hu"] == "3000.0" and rows[0]["standard"] == "synthrad2023"
    assert rows[0]["mask_source"] == report.cases[0].mask_source


# A second evaluation writing the same report from another process: it takes the report lock, writes
# its JSON and CSV (the other standard), and says so.
_WRITE_OTHER_REPORT = """\
import sys
from medcyclegan.evaluate import evaluate
data, out = sys.argv[1], sys.argv[2]
evaluate(data + "/pred", data + "/ref", data + "/mask", standard="synthrad2025").write(out, overwrite=True)
print("written", flush=True)
"""

_HOLD_REPORT_LOCK = """\
import sys, time
from medcyclegan.io.lock import FolderLock
from medcyclegan.evaluate import REPORT_LOCK_FILE
FolderLock(sys.argv[1], name=REPORT_LOCK_FILE).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _standards_on_disk(json_path: Path) -> tuple[str, set[str]]:
    with json_path.with_suffix(".csv").open(newline="") as handle:
        csv_standards = {row["standard"] for row in csv.DictReader(handle)}
    return _strict_json(json_path.read_text())["standard"], csv_standards


def test_two_evaluations_onto_one_report_never_leave_a_mixed_pair(
    report: EvaluationReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes the report while this one is between its JSON and its CSV: it waits
    for this one's pair, then writes its own pair, so both files are the other run's."""
    import subprocess
    import sys

    import medcyclegan.evaluate as evaluate_module

    out = tmp_path / "out" / "eval.json"
    real_write = evaluate_module.atomic_write_text
    other: list[subprocess.Popen] = []

    def write_then_let_the_other_in(path: Path, text: str, **kwargs: object) -> None:
        real_write(path, text, **kwargs)
        if path.suffix == ".json" and not other:
            other.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WRITE_OTHER_REPORT, str(tmp_path / "data"), str(out)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            # Unlocked, the other process writes both of its files here, before this one's CSV.
            with contextlib.suppress(subprocess.TimeoutExpired):
                other[0].wait(timeout=5)

    monkeypatch.setattr(evaluate_module, "atomic_write_text", write_then_let_the_other_in)
    report.write(out)
    assert _standards_on_disk(out) == ("synthrad2023", {"synthrad2023"})  # this run's pair, whole
    stdout, _ = other[0].communicate(timeout=120)
    assert other[0].returncode == 0 and stdout.strip() == "written"
    assert _standards_on_disk(out) == ("synthrad2025", {"synthrad2025"})  # then the other's, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.csv", "eval.json"]  # no lock file left


def test_a_report_held_by_a_stuck_process_is_refused_with_its_pid(
    report: EvaluationReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    import medcyclegan.evaluate as evaluate_module

    folder = tmp_path / "out"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_REPORT_LOCK, str(folder), "600"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(evaluate_module, "REPORT_LOCK_WAIT_S", 0.2)
        with pytest.raises(OutputError, match=rf"another evaluate process \(pid {holder.pid}\) is using"):
            report.write(folder / "eval.json")
        assert not (folder / "eval.json").exists() and not (folder / "eval.csv").exists()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # The kernel dropped the dead holder's lock: the next write goes through.
    json_path, csv_path = report.write(folder / "eval.json")
    assert json_path.is_file() and csv_path.is_file()


def test_a_report_waits_for_a_short_holder_and_ignores_a_training_lock(
    report: EvaluationReport, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tiny import folder_locked_by_another_process

    folder = tmp_path / "run"
    folder.mkdir()
    with folder_locked_by_another_process(folder):  # a training process holds the run folder
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_REPORT_LOCK, str(folder), "0.5"], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        json_path, _ = report.write(folder / "eval.json")  # waits out the half second
        assert holder.wait(timeout=60) == 0
    assert _standards_on_disk(json_path) == ("synthrad2023", {"synthrad2023"})


def test_write_refuses_to_overwrite(report: EvaluationReport, tmp_path: Path) -> None:
    json_path, csv_path = report.write(tmp_path / "eval.json")
    json_path.write_text("old json")
    csv_path.write_text("old csv")
    with pytest.raises(OutputError, match="already exists"):
        report.write(json_path)
    assert json_path.read_text() == "old json" and csv_path.read_text() == "old csv"

    json_path.unlink()  # only the CSV left: still refused, and nothing written
    with pytest.raises(OutputError, match=r"eval\.csv: already exists"):
        report.write(json_path)
    assert not json_path.exists()

    report.write(json_path, overwrite=True)
    assert _strict_json(json_path.read_text())["standard"] == "synthrad2023"
    assert csv_path.read_text().startswith("case,pred,ref,mask_source,mae,psnr,ssim")


def test_json_path_ending_in_csv_is_refused(report: EvaluationReport, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"must not end in \.csv"):
        report.write(tmp_path / "eval.csv")


def test_infinite_psnr_is_inf_in_json_csv_and_table(tmp_path: Path) -> None:
    """Identical volumes: PSNR inf as in the official code; JSON stays strict with the string "inf"
    (NaN, undefined, is null), the CSV and the table say inf."""
    from rich.console import Console

    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    pred_path = _save(tmp_path / "pred.nii.gz", _phantom())
    report = evaluate(pred_path, ref_path)
    assert report.cases[0].metrics["psnr"] == math.inf
    data = _strict_json(report.to_json())
    assert data["cases"][0]["metrics"]["psnr"] == "inf"
    assert float(data["cases"][0]["metrics"]["psnr"]) == math.inf
    assert data["summary"]["psnr"]["mean"] == "inf"
    assert data["summary"]["psnr"]["std"] is None  # std of [inf] is NaN: undefined
    assert data["cases"][0]["metrics"]["mae"] == 0.0
    assert data["metadata"]["psnr_identical"] == "inf"
    assert ",inf," in report.to_csv()
    console = Console(record=True, width=120)
    console.print(report.to_rich_table())
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in console.export_text().splitlines()]
    case_row = next(cells for cells in rows if cells and cells[0] == "ref")  # case name of ref.nii.gz
    assert case_row[2] == "inf"  # Case, MAE, PSNR, SSIM


@pytest.mark.parametrize("standard", ["synthrad2023", "synthrad2025"])
def test_negative_mask_values_are_outside(
    tmp_path: Path, standard: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SynthRAD code binarises masks with > 0: a -1 label is outside, not inside (!= 0)."""
    ref = _phantom()
    pred = ref + 25.0  # 25 HU error everywhere ...
    pred[0] += 5000.0  # ... and a large one in slice 0, labelled -1 in the mask
    mask = _box_mask().astype(np.int16)
    mask[0] = -1
    ref_path = _save(tmp_path / "ref.nii.gz", ref)
    pred_path = _save(tmp_path / "pred.nii.gz", pred)
    mask_path = _save(tmp_path / "mask.nii.gz", mask, dtype=np.int16)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        metrics = evaluate(pred_path, ref_path, mask_path, standard=standard).cases[0].metrics
    assert metrics["mae"] == pytest.approx(25.0)
    assert "only voxels > 0 count as inside" in caplog.text


def test_rich_table_layout(report: EvaluationReport) -> None:
    from rich.console import Console

    table = report.to_rich_table()
    headers = [str(column.header) for column in table.columns]
    assert headers == [
        "Case",
        "MAE [HU]",
        "PSNR [dB]",
        "SSIM",
        "MAE air/lung [HU]",
        "MAE soft tissue [HU]",
        "MAE bone [HU]",
        "Dice body",  # issue 17: the body outline Dice, the one column added
    ]
    assert table.row_count == 3 + 3  # cases, then mean / std / median
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    for expected in ("MAE [HU]", "PSNR [dB]", "mean", "std", "median", "30.0", "20.0", "4024", "-1024"):
        assert expected in text


def test_mask_on_another_grid_is_an_error(tmp_path: Path) -> None:
    ref_path = _save(tmp_path / "ref.nii.gz", _phantom())
    pred_path = _save(tmp_path / "pred.nii.gz", _phantom())
    mask_path = _save(tmp_path / "mask.nii.gz", _box_mask()[:, :, :-2], dtype=np.uint8)
    with pytest.raises(InputError, match=r"mask\.nii\.gz: mask shape"):
        evaluate(pred_path, ref_path, mask_path)


@pytest.mark.parametrize("problem", ["ends-in-csv", "exists", "is-a-folder", "unwritable-folder"])
def test_cli_checks_the_report_path_before_computing_any_metric(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    import os

    import medcyclegan.evaluate

    ref = _save(tmp_path / "ref.nii.gz", _phantom())
    computed: list[object] = []

    def scoring(*args: object, **kwargs: object) -> None:
        computed.append(args)
        raise AssertionError("metrics computed before the report path was checked")

    monkeypatch.setattr(medcyclegan.evaluate, "evaluate", scoring)
    out = tmp_path / "reports" / "r.json"
    out.parent.mkdir()
    if problem == "ends-in-csv":
        out = out.with_suffix(".csv")
    elif problem == "exists":
        out.write_text("keep")
    elif problem == "is-a-folder":
        out.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write into any folder")
        out.parent.chmod(0o500)
    try:
        result = cli("evaluate", "--pred", ref, "--ref", ref, "--out", out)
    finally:
        out.parent.chmod(0o700)
    assert result.code == 2 and computed == []
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err, result.err
    if problem == "ends-in-csv":
        assert lines[0] == (
            f"error: {out}: the JSON report path must not end in .csv (the CSV is written beside it); "
            "give e.g. r.json"
        )


# --------------------------------------------------------------------------- MAE per tissue class
def _tissue_case(ref: np.ndarray) -> np.ndarray:
    """A prediction with a different error per class of the reference (10, 20, 300 HU)."""
    return ref + np.where(ref < -400, 10.0, np.where(ref < 250, -20.0, 300.0))


def test_tissue_mae_in_json_csv_and_table(tmp_path: Path) -> None:
    from rich.console import Console

    from medcyclegan.metrics import TISSUE_EDGES_HU, TISSUE_MAE_NAMES, tissue_mae

    refs = {name: _phantom(seed) for seed, name in enumerate(("a", "b"))}
    mask = _box_mask()
    for name, ref in refs.items():
        _save(tmp_path / "ref" / f"{name}.nii.gz", ref)
        _save(tmp_path / "pred" / f"{name}.nii.gz", _tissue_case(ref) + (5.0 if name == "b" else 0.0))
        _save(tmp_path / "mask" / f"{name}.nii.gz", mask, dtype=np.uint8)
    report = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "mask")
    expected = {
        name: tissue_mae(_tissue_case(ref) + (5.0 if name == "b" else 0.0), ref, mask)
        for name, ref in refs.items()
    }
    assert expected["a"] == pytest.approx({"mae_air_lung": 10.0, "mae_soft_tissue": 20.0, "mae_bone": 300.0})
    json_path, csv_path = report.write(tmp_path / "out" / "eval.json")
    data = _strict_json(json_path.read_text())
    assert data["metadata"]["tissue_edges_hu"] == list(TISSUE_EDGES_HU) == [-400.0, 250.0]
    assert data["metadata"]["tissue_classes"]["bone"] == "reference HU >= 250"
    for case in data["cases"]:
        assert case["tissue_mae"] == pytest.approx(expected[case["case"]])
        assert set(case["metrics"]) == {"mae", "psnr", "ssim"}  # the SynthRAD metrics, unchanged
    for name in TISSUE_MAE_NAMES:
        values = [expected[case][name] for case in ("a", "b")]
        assert data["summary"][name]["mean"] == pytest.approx(np.mean(values))
        assert data["summary"][name]["std"] == pytest.approx(np.std(values))
        assert data["summary"][name]["n"] == 2
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert {name: float(row[name]) for name in TISSUE_MAE_NAMES} == pytest.approx(expected[row["case"]])
        assert (row["tissue_edge_low_hu"], row["tissue_edge_high_hu"]) == ("-400.0", "250.0")
    console = Console(record=True, width=200)
    console.print(report.to_rich_table())
    text = console.export_text()
    assert "MAE bone [HU]" in text and "302.5" in text  # mean bone MAE of 300 and 305 HU
    assert "tissue by reference HU: air/lung < -400, soft tissue [-400, 250), bone >= 250" in text


def test_tissue_edges_are_used_and_recorded(tmp_path: Path) -> None:
    from medcyclegan.metrics import tissue_mae

    ref = _phantom()
    pred = _tissue_case(ref)
    ref_path = _save(tmp_path / "ref.nii.gz", ref)
    pred_path = _save(tmp_path / "pred.nii.gz", pred)
    report = evaluate(pred_path, ref_path, tissue_edges=(-200.0, 100.0))
    assert report.metadata["tissue_edges_hu"] == [-200.0, 100.0]
    mask = synthrad_body_mask(ref)
    assert report.cases[0].tissue_mae == pytest.approx(tissue_mae(pred, ref, mask, (-200.0, 100.0)))
    with pytest.raises(ConfigError, match="tissue edges"):
        evaluate(pred_path, ref_path, tissue_edges=(250.0, -400.0))


def test_a_tissue_class_missing_in_a_case_is_nan_and_left_out(tmp_path: Path) -> None:
    from rich.console import Console

    no_bone = np.clip(_phantom(0), None, 200.0)
    with_bone = _phantom(1)
    for name, ref in (("no_bone", no_bone), ("with_bone", with_bone)):
        _save(tmp_path / "ref" / f"{name}.nii.gz", ref)
        _save(tmp_path / "pred" / f"{name}.nii.gz", _tissue_case(ref))
    report = evaluate(tmp_path / "pred", tmp_path / "ref")
    cases = {case.case: case for case in report.cases}
    assert math.isnan(cases["no_bone"].tissue_mae["mae_bone"])
    assert report.summary["mae_bone"]["n"] == 1
    assert report.summary["mae_bone"]["mean"] == pytest.approx(cases["with_bone"].tissue_mae["mae_bone"])
    assert report.summary["mae_soft_tissue"]["n"] == 2
    data = _strict_json(report.to_json())
    assert data["cases"][0]["tissue_mae"]["mae_bone"] is None  # NaN is null in JSON
    assert "nan" in report.to_csv().splitlines()[1].split(",")
    console = Console(record=True, width=240)
    console.print(report.to_rich_table())
    assert "MAE bone: no such voxel in the mask of 1 of 2 case(s) (no_bone), left out of its summary" in (
        console.export_text()
    )


@pytest.mark.parametrize("text", ["abc", "250,-400", "1,2,3", "nan,1", "-400", "1,1", "-inf,0"])
def test_cli_refuses_bad_tissue_edges(cli, tmp_path: Path, text: str) -> None:
    ref = _save(tmp_path / "ref.nii.gz", _phantom())
    result = cli("evaluate", "--pred", ref, "--ref", ref, f"--tissue-edges={text}")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, result.err
    assert lines[0] == (
        f"error: --tissue-edges must be two increasing HU values LOW,HIGH (e.g. -400,250); got {text!r}"
    )


def test_cli_tissue_edges_reach_the_report(cli, tmp_path: Path) -> None:
    ref = _save(tmp_path / "ref.nii.gz", _phantom())
    pred = _save(tmp_path / "pred.nii.gz", _tissue_case(_phantom()))
    out = tmp_path / "r.json"
    result = cli("evaluate", "--pred", pred, "--ref", ref, "--tissue-edges", "-300,200", "--out", out)
    assert result.code == 0, result.err
    assert "MAE soft tissue [HU]" in result.out
    assert _strict_json(out.read_text())["metadata"]["tissue_edges_hu"] == [-300.0, 200.0]


def test_cli_help_states_the_default_tissue_edges(cli) -> None:
    from medcyclegan.metrics import TISSUE_EDGES_HU

    low, high = TISSUE_EDGES_HU
    result = cli("evaluate", "--help")
    assert result.code == 0 and f"[default: {low:g},{high:g}]" in " ".join(result.out.split())

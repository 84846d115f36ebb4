"""find_volumes and symbolic links: followed, loops and second routes to one file listed once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medcyclegan.io import find_volumes

SHAPE = (6, 5, 4)


def test_symlinked_folders_and_series_are_followed_once(
    write_nifti, write_dicom_series, tmp_path, caplog
) -> None:
    data = np.zeros(SHAPE, np.int16)
    root = tmp_path / "data"
    write_nifti("data/real/a.nii.gz", data)
    write_nifti("outside/b.nii.gz", data)
    series, _ = write_dicom_series("scans/series1", data + 100)
    (root / "alias").symlink_to(root / "real")  # a second route to real/: listed once, as real/
    (root / "linked").symlink_to(tmp_path / "outside")  # only reachable through the link
    (root / "linked_again").symlink_to(tmp_path / "outside")
    (root / "series").symlink_to(series)  # a DICOM series folder reached through a link
    (root / "real" / "loop").symlink_to(root)  # a loop back to the top
    (root / "real" / "same.nii.gz").symlink_to(root / "real" / "a.nii.gz")

    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        found = find_volumes(root)

    assert found == [root / "linked" / "b.nii.gz", root / "real" / "a.nii.gz", root / "series"]
    warnings = [r.getMessage() for r in caplog.records if "symbolic links" in r.getMessage()]
    assert len(warnings) == 1
    for skipped in ("alias", "linked_again", "real/loop", "real/same.nii.gz"):
        assert skipped in warnings[0] or "..." in warnings[0]
    assert "skipped 4 path(s)" in warnings[0]


def test_a_plain_tree_gives_no_symlink_warning(write_nifti, tmp_path: Path, caplog) -> None:
    write_nifti("d/x/a.nii.gz", np.zeros(SHAPE, np.int16))
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        assert find_volumes(tmp_path / "d") == [tmp_path / "d" / "x" / "a.nii.gz"]
    assert not caplog.records


def test_a_file_link_loop_neither_hangs_nor_crashes(write_nifti, tmp_path: Path) -> None:
    write_nifti("d/a.nii.gz", np.zeros(SHAPE, np.int16))
    (tmp_path / "d" / "loop.nii.gz").symlink_to(tmp_path / "d" / "loop.nii.gz")
    assert find_volumes(tmp_path / "d") == [tmp_path / "d" / "a.nii.gz", tmp_path / "d" / "loop.nii.gz"]

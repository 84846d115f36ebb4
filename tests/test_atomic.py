"""Atomic outputs: a file another process publishes first is never replaced without overwrite."""

from __future__ import annotations

import errno
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import race_at_temporary

from medcyclegan.errors import OutputError
from medcyclegan.io import atomic
from medcyclegan.io.atomic import atomic_path, atomic_write_text
from medcyclegan.io.volume import Geometry

# The one line a process gets when another one published the same output first.
RACE_MESSAGE = "was created by another process while this one was writing; pass --overwrite to replace it"


def _entries(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


def _racing_publish(monkeypatch: pytest.MonkeyPatch, module: object) -> list[Path]:
    """Makes ``module.publish`` let another process create the final file just before publishing."""
    created: list[Path] = []
    real = atomic.publish

    def publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
        path = Path(path)
        if not path.exists():
            path.write_text("the other process's file")
            created.append(path)
        real(tmp, path, overwrite=overwrite)

    monkeypatch.setattr(module, "publish", publish)
    return created


def test_a_file_created_while_writing_is_kept_without_overwrite(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "report.json"
    created = race_at_temporary(monkeypatch)
    with pytest.raises(OutputError) as caught:
        atomic_write_text(target, "ours", overwrite=False)
    assert str(caught.value) == f"{target}: {RACE_MESSAGE}"
    assert created == [target]
    assert target.read_text() == "the other process's file"
    assert _entries(tmp_path) == ["report.json"]  # our temporary is gone


def test_overwrite_replaces_a_file_created_while_writing(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "report.json"
    race_at_temporary(monkeypatch)
    atomic_write_text(target, "ours", overwrite=True)
    assert target.read_text() == "ours"
    assert _entries(tmp_path) == ["report.json"]


def test_publish_without_overwrite_writes_a_new_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.nii.gz"
    with atomic_path(target, overwrite=False) as tmp:
        assert tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert target.stat().st_nlink == 1  # the temporary hard link is gone
    assert _entries(tmp_path) == ["a.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fallback", ["renameat2", "exclusive-create"])
def test_file_systems_without_hard_links_still_never_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: str
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_link)
    if fallback == "exclusive-create":
        monkeypatch.setattr(atomic, "_renameat2", lambda tmp, path: False)
    elif not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux-only")
    fresh = tmp_path / "fresh.json"
    atomic_write_text(fresh, "ours", overwrite=False)
    assert fresh.read_text() == "ours"
    taken = tmp_path / "taken.json"
    race_at_temporary(monkeypatch)
    with pytest.raises(OutputError, match="was created by another process"):
        atomic_write_text(taken, "ours", overwrite=False)
    assert taken.read_text() == "the other process's file"
    assert _entries(tmp_path) == ["fresh.json", "taken.json"]


def _geometry() -> Geometry:
    return Geometry(
        affine=np.diag([1.0, 1.0, 2.0, 1.0]), shape=(4, 5, 3), dtype="int16", source_format="nifti"
    )


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nii", "out.mha", "out.nrrd", "out.mhd", "out.nhdr"])
def test_write_volume_keeps_an_output_created_while_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from medcyclegan.io.writers import write_volume

    race_at_temporary(monkeypatch)  # the volume file (the header of .mhd / .nhdr) loses the race
    target = tmp_path / name
    with pytest.raises(OutputError) as caught:
        write_volume(np.zeros((4, 5, 3), np.int16), _geometry(), target)
    assert str(caught.value) == f"{target}: {RACE_MESSAGE}"
    # The other process's file only: no temporary, and no data file of a header never published.
    assert _entries(tmp_path) == [name]
    assert target.read_text() == "the other process's file"
    # With overwrite the same race replaces it.
    write_volume(np.zeros((4, 5, 3), np.int16), _geometry(), target, overwrite=True)
    assert target.stat().st_size > len("the other process's file")


@pytest.mark.parametrize("name", ["out.mhd", "out.nhdr"])
def test_a_detached_data_file_created_while_writing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from medcyclegan.io import writers

    created = _racing_publish(monkeypatch, writers)  # writers publishes the data files itself
    target = tmp_path / name
    with pytest.raises(OutputError, match="was created by another process") as caught:
        writers.write_volume(np.zeros((4, 5, 3), np.int16), _geometry(), target)
    (data_file,) = created
    assert str(caught.value).startswith(f"{data_file}: ")
    assert _entries(tmp_path) == [data_file.name]  # no header pointing at the other's data


def _writer(path: str, text: str, barrier: object, results: object) -> None:
    """One of two processes writing ``path`` at once; both have their temporary before either publishes."""
    try:
        with atomic_path(path, overwrite=False) as tmp:
            tmp.write_text(text)
            barrier.wait(timeout=60)  # type: ignore[attr-defined]
        results.put((text, "ok"))  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent, which makes the assertions
        results.put((text, str(exc)))  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork")
def test_two_processes_writing_one_output_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    target = tmp_path / "out.json"
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(target=_writer, args=(str(target), text, barrier, results)) for text in ("a", "b")
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    winners = [text for text, outcome in outcomes.items() if outcome == "ok"]
    assert len(winners) == 1, outcomes
    (loser,) = set(outcomes) - set(winners)
    assert outcomes[loser] == f"{target}: {RACE_MESSAGE}"
    assert target.read_text() == winners[0]
    assert _entries(tmp_path) == ["out.json"]

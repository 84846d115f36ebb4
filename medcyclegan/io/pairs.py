"""Registered pairs of volumes: the same case in two folders, on the same voxel grid.

A paired model (pix2pix) learns from a source and a target volume of each case that cover the same
voxels: :func:`check_registered_pairs` matches two lists of volumes by case name (the one pairing
rule, :func:`~medcyclegan.io.discovery.pair_by_case`) and compares each pair's grid with the one
grid rule (:meth:`~medcyclegan.io.volume.Geometry.same_grid`), reading headers only where the format
allows (:func:`~medcyclegan.io.readers.read_geometry`). It reports every problem at once, so that
one run of the check names all the cases to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medcyclegan.io.discovery import case_name, pair_by_case
from medcyclegan.io.readers import read_geometry

# Cases named per kind of problem in a message; the others are counted.
_SHOWN = 5


@dataclass(frozen=True)
class RegisteredPairs:
    """The outcome of :func:`check_registered_pairs`.

    Attributes:
        pairs: ``(case name, source index, target index)`` of every matched case, in source order.
        unmatched_sources: case names of source volumes without a target volume.
        unmatched_targets: case names of target volumes without a source volume.
        duplicates: ``(side, case name, first path, second path)`` for a case name given twice on one
            side (0: the sources, 1: the targets).
        grid_mismatches: ``(case name, differences)`` of each matched case whose two volumes are on
            different grids (:meth:`~medcyclegan.io.volume.Geometry.grid_differences`).
    """

    pairs: list[tuple[str, int, int]]
    unmatched_sources: list[str]
    unmatched_targets: list[str]
    duplicates: list[tuple[int, str, Path, Path]]
    grid_mismatches: list[tuple[str, list[str]]]

    def problems(self, roles: tuple[str, str] = ("source", "target")) -> list[str]:
        """Each problem in words, naming the cases (at most a few of each kind): empty when all pair.

        Args:
            roles: how the caller names the sources and the targets (e.g. ``("--src", "--tgt")``).
        """
        source, target = roles
        found = [
            f"two {roles[side]} volumes are named {name!r} ({first}, {second})"
            for side, name, first, second in self.duplicates
        ]
        if self.unmatched_sources:
            found.append(
                f"{_listing(self.unmatched_sources)} of {source} {_has(self.unmatched_sources)} no {target} volume"
            )
        if self.unmatched_targets:
            found.append(
                f"{_listing(self.unmatched_targets)} of {target} {_has(self.unmatched_targets)} no {source} volume"
            )
        found += [
            f"case {name!r} on different grids: {', '.join(differences)}"
            for name, differences in self.grid_mismatches[:_SHOWN]
        ]
        if len(self.grid_mismatches) > _SHOWN:
            found.append(f"{len(self.grid_mismatches) - _SHOWN} more case(s) on different grids")
        return found


def _has(names: Sequence[str]) -> str:
    return "has" if len(names) == 1 else "have"


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{'case' if len(names) == 1 else 'cases'} {shown}{more}"


def check_registered_pairs(sources: Sequence[Path], targets: Sequence[Path]) -> RegisteredPairs:
    """Matches ``sources`` and ``targets`` by case name and compares the grid of every pair.

    Nothing is refused here: the caller turns :meth:`RegisteredPairs.problems` into its error.

    Args:
        sources: volumes of one side (files or DICOM folders).
        targets: volumes of the other side.

    Raises:
        InputError: a volume whose header cannot be read.
    """
    indexed_sources = list(enumerate(Path(p) for p in sources))
    indexed_targets = list(enumerate(Path(p) for p in targets))
    pairing = pair_by_case(indexed_sources, indexed_targets, name=lambda item: case_name(item[1]))
    duplicates = [
        (side, duplicate[0], duplicate[1][1], duplicate[2][1])
        for side, duplicate in enumerate((pairing.duplicate_source, pairing.duplicate_target))
        if duplicate is not None
    ]
    mismatches = []
    for name, (_, source), (_, target) in pairing.pairs:
        differences = read_geometry(source).grid_differences(read_geometry(target))
        if differences:
            mismatches.append((name, differences))
    return RegisteredPairs(
        pairs=[(name, i, j) for name, (i, _), (j, _) in pairing.pairs],
        unmatched_sources=[case_name(path) for _, path in pairing.unmatched_sources],
        unmatched_targets=[case_name(path) for _, path in pairing.unmatched_targets],
        duplicates=duplicates,
        grid_mismatches=mismatches,
    )

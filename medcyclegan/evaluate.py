"""Score synthetic CT against reference CT with the SynthRAD definitions and report the results.

``evaluate(pred, ref, mask)`` takes files or folders (folders are paired by case name), reads every
volume with its geometry, refuses pairs whose voxel grids differ (no resampling: the metrics are
computed on the reference's own voxel grid, in its file voxel order), takes the body mask from a file
or computes it from the reference (:func:`medcyclegan.metrics.synthrad_body_mask`), and returns an
:class:`EvaluationReport` that prints as a table and writes JSON + CSV. Every report records the
standard, data range, clip range and the mask source of every case, because these choices alone move
the numbers (PSNR by several dB).

PSNR is infinite when the masked voxels of prediction and reference are identical (as in the official
SynthRAD code). The table shows ``inf``; JSON, which has no infinity, carries the string ``"inf"``
(NaN, an undefined value, is ``null``); the CSV writes ``inf`` / ``nan``.

Beside the SynthRAD metrics every case gets its MAE per tissue class of the reference
(:func:`medcyclegan.metrics.tissue_mae`: air/lung, soft tissue, bone; the HU edges are recorded in the
report). A class without voxels inside a case's mask is NaN there and left out of its summary. With
``figures`` a PNG panel per case is drawn as well (:mod:`medcyclegan.figures`).

Every case also gets the Dice overlap of the body outlines of prediction and reference
(:data:`medcyclegan.metrics.BODY_DICE_NAME`, both outlines by the same rule), and with ``labels`` the
MAE over each segmentation label of the reference (:func:`medcyclegan.metrics.label_mae`), named from
an nnU-Net v2 or MSD ``dataset.json`` (:mod:`medcyclegan.label_names`) or ``label_<value>``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from medcyclegan import __version__
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.figures import case_panel, write_case_panel
from medcyclegan.io.atomic import atomic_write_text, check_can_write
from medcyclegan.io.discovery import (
    DICOM_SUFFIX,
    case_name,
    files_of_volume,
    find_volumes,
    is_volume_path,
    pair_by_case,
    shared_file,
    split_series,
    volume_suffix,
)
from medcyclegan.io.lock import FolderLock
from medcyclegan.io.readers import read_mask, read_volume
from medcyclegan.io.volume import Volume
from medcyclegan.label_names import LabelNames, read_label_names
from medcyclegan.metrics import (
    BODY_DICE_DEFINITION,
    BODY_DICE_NAME,
    BODY_MASK_METHOD,
    TISSUE_EDGES_HU,
    TISSUE_MAE_NAMES,
    check_tissue_edges,
    compute_metrics,
    dice_coefficient,
    label_mae,
    metric_metadata,
    metric_names,
    synthrad_body_mask,
    tissue_definitions,
    tissue_mae,
)

logger = logging.getLogger("medcyclegan")

SUMMARY_STATISTICS = ("mean", "std", "median")
COLUMN_HEADERS = {
    "mae": "MAE [HU]",
    "psnr": "PSNR [dB]",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "mae_air_lung": "MAE air/lung [HU]",
    "mae_soft_tissue": "MAE soft tissue [HU]",
    "mae_bone": "MAE bone [HU]",
    BODY_DICE_NAME: "Dice body",
}
DISPLAY_FORMATS = {
    "mae": "{:.1f}",
    "psnr": "{:.2f}",
    "ssim": "{:.4f}",
    "ms_ssim": "{:.4f}",
    **dict.fromkeys(TISSUE_MAE_NAMES, "{:.1f}"),
    BODY_DICE_NAME: "{:.4f}",
}
FIGURE_SUFFIX = ".png"
# The lock taken while a report's JSON and CSV are written (its own name: a report written into a
# training run folder does not wait for the training that holds that folder's lock); removed
# afterwards, so the user's folder holds only the report.
REPORT_LOCK_FILE = ".medcyclegan-report.lock"
# Writing two small files takes milliseconds; a holder that keeps the lock this long is stuck.
REPORT_LOCK_WAIT_S = 30.0
# Report keys of the per-label MAEs: mae_label_<name>.
LABEL_MAE_PREFIX = "mae_label_"
LABEL_MAE_FORMAT = "{:.1f}"
LABEL_REGION_RULE = (
    "the voxels of each label value of the reference's label map (0, background, left out); "
    "not restricted to the body mask"
)
# Characters of a figure title's label line before it wraps onto the next.
FIGURE_LINE_CHARACTERS = 110


def label_key(name: str) -> str:
    """The report key of a label's MAE: ``mae_label_<name>``."""
    return f"{LABEL_MAE_PREFIX}{name}"


def check_report_paths(
    json_path: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path | None] = ()
) -> tuple[Path, Path]:
    """The JSON report path and the CSV beside it (same stem, ``.csv``), both checked before any work.

    Call it before computing metrics, so that a report that cannot be written fails at once.

    Args:
        json_path: the ``--out`` path.
        overwrite: an existing report may be replaced.
        inputs: the volumes (files or folders) being scored: the report must not replace any of
            their files, not even with ``overwrite``.

    Raises:
        OutputError: the JSON path ends in ``.csv`` or is named like a volume (``.nii.gz``, ``.mha``,
            ``.dcm``...), a target is one of the inputs' files, exists (without ``overwrite``), is a
            folder, or its folder cannot be created or written.
    """

    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    if json_path.suffix.lower() == ".csv":
        raise OutputError(
            f"the JSON report path must not end in .csv (the CSV is written beside it); "
            f"give e.g. {json_path.with_suffix('.json').name}",
            json_path,
        )
    if volume_suffix(json_path) or json_path.name.lower().endswith(DICOM_SUFFIX):
        # JSON text under a volume's name (with --overwrite it replaced the prediction itself).
        raise OutputError("is named like a volume; the report is JSON: give e.g. report.json", json_path)
    read = [
        f for given in inputs if given is not None and Path(given).exists() for f in files_of_volume(given)
    ]
    if clash := shared_file([json_path, csv_path], read):
        raise OutputError(f"the report would replace the input file {clash[1]}", clash[0])
    check_can_write(json_path, overwrite)
    check_can_write(csv_path, overwrite)
    return json_path, csv_path


@dataclass
class CaseResult:
    """Metrics of one case.

    Attributes:
        case: case name shared by the prediction and reference files.
        pred: path of the predicted (synthetic) volume.
        ref: path of the reference volume.
        mask_source: ``"file: <path>"`` or ``"computed from reference (Otsu, dilation, closing, dilation)"``.
        metrics: metric name -> value (MAE in HU, PSNR in dB, SSIM / MS-SSIM unitless).
        tissue_mae: :data:`medcyclegan.metrics.TISSUE_MAE_NAMES` -> MAE in HU inside the mask per
            tissue class of the reference (:func:`medcyclegan.metrics.tissue_mae`); NaN for a class
            without voxels in the mask.
        dice_body: Dice of the body outlines of prediction and reference
            (:data:`medcyclegan.metrics.BODY_DICE_DEFINITION`); NaN when both are empty.
        label_mae: ``mae_label_<name>`` -> MAE in HU over that label's voxels of the reference's label
            map (:func:`medcyclegan.metrics.label_mae`), for every label of the report; NaN for a label
            this case's map lacks. Empty without label maps.
    """

    case: str
    pred: str
    ref: str
    mask_source: str
    metrics: dict[str, float]
    tissue_mae: dict[str, float] = field(default_factory=dict)
    dice_body: float = math.nan
    label_mae: dict[str, float] = field(default_factory=dict)

    def value(self, name: str) -> float:
        """A SynthRAD metric, tissue or label MAE, or the body Dice by name; NaN if the case has none."""
        if name == BODY_DICE_NAME:
            return self.dice_body
        return self.metrics.get(name, self.tissue_mae.get(name, self.label_mae.get(name, math.nan)))


@dataclass
class EvaluationReport:
    """Per-case metrics and their summary, with everything needed to reproduce the numbers.

    Attributes:
        standard: ``"synthrad2023"`` or ``"synthrad2025"``.
        metadata: :func:`medcyclegan.metrics.metric_metadata` (data range, clip range, definitions,
            units) plus ``std_ddof``, ``grid``, ``tissue_edges_hu`` ([low, high]: air/lung below low,
            bone from high), ``tissue_classes`` (each class's rule in words), ``dice_body`` (its
            definition), the package version and, with label maps, ``labels`` (see :func:`evaluate`).
        cases: one :class:`CaseResult` per case, sorted by case name.
        summary: metric, tissue or label MAE, or body Dice -> ``{"mean", "std", "median", "n"}`` over
            the cases whose value is not NaN (``n`` counts them); ``std`` is the population standard
            deviation (ddof 0).
        figures: the PNG panels written, one per case (empty without ``figures``); in the JSON only
            when there are some.
        labels: label value -> name of every label reported (present in some case's label map), in
            value order; empty without label maps.
    """

    standard: str
    metadata: dict[str, Any]
    cases: list[CaseResult]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = summarise(self.cases, self.column_names)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return metric_names(self.standard)

    @property
    def label_keys(self) -> tuple[str, ...]:
        """``mae_label_<name>`` of every label reported, in value order."""
        return tuple(label_key(name) for name in self.labels.values())

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every per-case value, in report order: SynthRAD metrics, tissue MAEs, body Dice, label MAEs."""
        return self.metric_names + TISSUE_MAE_NAMES + (BODY_DICE_NAME,) + self.label_keys

    def to_dict(self) -> dict[str, Any]:
        """Plain Python structure (floats may be ``nan`` or ``inf``; see :meth:`to_json` for JSON).

        Without label maps the cases carry no ``label_mae``.
        """
        cases = [asdict(case) for case in self.cases]
        if "labels" not in self.metadata:
            for case in cases:
                del case["label_mae"]
        report = {
            "standard": self.standard,
            "metadata": self.metadata,
            "cases": cases,
            "summary": self.summary,
        }
        if self.figures:
            report["figures"] = self.figures
        return report

    def to_json(self) -> str:
        """Strict JSON (indent 2): no bare ``NaN`` / ``Infinity``, which JSON does not allow.

        An infinite value (PSNR of identical masked voxels, ``inf`` as in the official SynthRAD code) is
        written as the string ``"inf"`` (``"-inf"`` if negative), so that it stays distinguishable from an
        undefined value: NaN is written as ``null``. ``float("inf")`` reads the string back.
        """
        return json.dumps(_json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        """One row per case: case, pred, ref, mask_source, the metrics, the tissue MAEs, the body Dice,
        the label MAEs (``mae_label_<name>``, with label maps), then standard, data range, clip range
        and the tissue edges (``tissue_edge_low_hu``, ``tissue_edge_high_hu``).

        Values are written with full precision (``repr``); NaN and infinity as ``nan`` / ``inf``.
        """
        low, high = self.metadata["clip_range_hu"]
        edges = self.metadata.get("tissue_edges_hu", [math.nan, math.nan])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            [
                "case",
                "pred",
                "ref",
                "mask_source",
                *self.column_names,
                "standard",
                "data_range",
                "clip_min_hu",
                "clip_max_hu",
                "tissue_edge_low_hu",
                "tissue_edge_high_hu",
            ]
        )
        for case in self.cases:
            values = [repr(float(case.value(name))) for name in self.column_names]
            ranges = [repr(float(value)) for value in (self.metadata["data_range"], low, high, *edges)]
            writer.writerow(
                [case.case, case.pred, case.ref, case.mask_source, *values, self.standard, *ranges]
            )
        return buffer.getvalue()

    def write(self, json_path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Writes the JSON report and the CSV beside it (same stem, ``.csv``), each atomically.

        Both targets are checked before anything is written, so a refusal leaves no partial report.

        Args:
            json_path: path of the JSON report, e.g. ``results/eval.json`` (CSV: ``results/eval.csv``).
            overwrite: replace existing files.

        Returns:
            ``(json_path, csv_path)``.

        Raises:
            OutputError: a target exists (without ``overwrite``), the folder is unwritable, or the JSON
                path itself ends in ``.csv``.
        """

        json_path, csv_path = check_report_paths(json_path, overwrite=overwrite)
        json_text, csv_text = self.to_json(), self.to_csv()
        # Two evaluations onto one report took turns file by file (A's JSON beside B's CSV); under
        # this lock each writes both, so the pair on disk is always one run's.
        with FolderLock(
            json_path.parent, holder="evaluate process", place="report folder",
            name=REPORT_LOCK_FILE, wait_s=REPORT_LOCK_WAIT_S, remove=True,
        ):  # fmt: skip
            check_report_paths(json_path, overwrite=overwrite)  # the other may have written it meanwhile
            atomic_write_text(json_path, json_text, overwrite=overwrite)
            atomic_write_text(csv_path, csv_text, overwrite=overwrite)
        return json_path, csv_path

    def to_rich_table(self) -> Table:
        """Cases as rows, metrics as columns (units in headers), then mean / std / median rows.

        All text goes in as :class:`rich.text.Text`, so brackets in headers (``[HU]``) and case names are
        shown as written instead of being read as rich markup.
        """

        low, high = self.metadata["clip_range_hu"]
        sources = {case.mask_source for case in self.cases}
        if sources == {BODY_MASK_METHOD}:
            mask_note = f"mask {BODY_MASK_METHOD}"
        elif all(source.startswith("file: ") for source in sources):
            mask_note = "masks from files"
        else:
            mask_note = "masks from files and computed from references"
        title = f"{self.standard}: data range {self.metadata['data_range']:g} HU, clip [{low:g}, {high:g}] HU"
        caption_lines = [
            mask_note,
            self._tissue_note(),
            "Dice body: the outlines of prediction and reference, each by the computed mask's rule",
            *self._undefined_notes(),
            f"{len(self.cases)} case(s); std with ddof 0",
        ]
        table = Table(
            title=Text(title),
            caption=Text("\n".join(caption_lines)),
            # Wide enough for the title and caption to stay on one line each (the console still caps it).
            min_width=max(len(line) for line in [title, *caption_lines]) + 2,
        )
        table.add_column(Text("Case"))
        names = self.metric_names + TISSUE_MAE_NAMES + (BODY_DICE_NAME,)
        for name in names:
            table.add_column(Text(COLUMN_HEADERS[name]), justify="right")
        for case in self.cases:
            table.add_row(Text(case.case), *(_display(name, case.value(name)) for name in names))
        table.add_section()
        for statistic in SUMMARY_STATISTICS:
            table.add_row(
                statistic,
                *(_display(name, self.summary[name][statistic]) for name in names),
                style="bold",
            )
        return table

    def to_label_table(self) -> Table | None:
        """The MAE per label over the cases: labels as rows, with value, case count, mean / std /
        median and the case where the label's MAE is largest; ``None`` without label maps.

        Per-case values are in the JSON and CSV: a row per label stays readable for many cases.
        """
        if "labels" not in self.metadata:
            return None
        labels = self.metadata["labels"]
        title = "MAE per label of the reference [HU]"
        caption_lines = [
            "each label's voxels in the reference's label map, not cut by the body mask",
            f"names: {labels['names_source']}",
            *self._label_notes(),
            f"{len(self.cases)} case(s); std with ddof 0",
        ]
        table = Table(
            title=Text(title),
            caption=Text("\n".join(caption_lines)),
            min_width=max(len(line) for line in [title, *caption_lines]) + 2,
        )
        for header in ("Label", "Value", "Cases", "mean", "std", "median", "largest (case)"):
            table.add_column(Text(header), justify="left" if header == "Label" else "right")
        for value, name in self.labels.items():
            key = label_key(name)
            summary = self.summary[key]
            having = [case for case in self.cases if not math.isnan(case.value(key))]
            worst = max(having, key=lambda case: case.value(key), default=None)
            table.add_row(
                Text(name),
                str(value),
                f"{summary['n']}/{len(self.cases)}",
                *(_display(key, summary[statistic]) for statistic in SUMMARY_STATISTICS),
                Text("" if worst is None else f"{_display(key, worst.value(key))} ({worst.case})"),
            )
        return table

    def _label_notes(self) -> list[str]:
        """Which cases lack a label (left out of its summary), one line per label, and an empty table's reason."""
        if not self.labels:
            return ["no label > 0 in any label map"]
        notes = []
        for name in self.labels.values():
            missing = [case.case for case in self.cases if math.isnan(case.value(label_key(name)))]
            if missing:
                notes.append(
                    f"{name}: absent from the label map of {len(missing)} of {len(self.cases)} case(s) "
                    f"({', '.join(missing)}), left out of its summary"
                )
        return notes

    def _tissue_note(self) -> str:
        """The tissue classes' rule, e.g. "tissue by reference HU: air/lung < -400, bone >= 250"."""
        low, high = self.metadata.get("tissue_edges_hu", TISSUE_EDGES_HU)
        return (
            f"tissue by reference HU: air/lung < {low:g}, soft tissue [{low:g}, {high:g}), bone >= {high:g}"
        )

    def _undefined_notes(self) -> list[str]:
        """One line per tissue class that is undefined (no voxel in the mask) in some cases."""
        notes = []
        for name in TISSUE_MAE_NAMES:
            missing = [case.case for case in self.cases if math.isnan(case.value(name))]
            if missing:
                notes.append(
                    f"{COLUMN_HEADERS[name].removesuffix(' [HU]')}: no such voxel in the mask of "
                    f"{len(missing)} of {len(self.cases)} case(s) ({', '.join(missing)}), left out of its summary"
                )
        empty = [case.case for case in self.cases if math.isnan(case.dice_body)]
        if empty:
            notes.append(
                f"Dice body: both outlines empty in {len(empty)} of {len(self.cases)} case(s) "
                f"({', '.join(empty)}), left out of its summary"
            )
        return notes


def summarise(cases: list[CaseResult], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Mean, population std (ddof 0), median and count of each metric over the cases, NaN values left out.

    ``inf`` (PSNR of identical volumes) is kept, so it shows in the mean rather than being hidden.
    """
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        values = np.array([case.value(name) for case in cases], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            summary[name] = {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
            continue
        with np.errstate(invalid="ignore"):  # std of values containing inf is nan, on purpose
            summary[name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "median": float(np.median(values)),
                "n": int(values.size),
            }
    return summary


def evaluate(
    pred: str | Path,
    ref: str | Path,
    mask: str | Path | None = None,
    *,
    standard: str = "synthrad2023",
    tissue_edges: tuple[float, float] = TISSUE_EDGES_HU,
    figures: str | Path | None = None,
    source: str | Path | None = None,
    overwrite: bool = False,
    labels: str | Path | None = None,
    label_names: str | Path | None = None,
) -> EvaluationReport:
    """Scores predicted volumes against references with a SynthRAD standard, per tissue class and label.

    Every case gets the Dice of the body outlines of prediction and reference, each outline computed
    from its own volume by :func:`medcyclegan.metrics.synthrad_body_mask`: the rule that gives the
    reference's mask when none is given. A given ``mask`` is not used for it: compared with a mask
    drawn by another rule, the Dice would measure the two rules, not the translation. It is always
    computed (one more body mask per case, about as long as reading the volume): an outline the
    translation moves or invents shows here whether or not label maps exist.

    With ``labels``, every label value > 0 present in a case's label map (the reference's
    segmentation, on its grid) gets the MAE over its voxels (:func:`medcyclegan.metrics.label_mae`).
    The body mask does not restrict these regions: a label is its own region, drawn by whoever
    segmented the reference, and cutting it with the Otsu outline would change a structure's MAE
    depending on how the outline falls at the skin, or on labels that lie outside it (a couch, air);
    the SynthRAD numbers stay inside the mask. A label that a case's map lacks is NaN for that case
    and left out of its summary.

    Args:
        pred: a predicted (synthetic CT, HU) volume file, or a folder of them.
        ref: the reference CT file, or a folder of them; folders are paired by case name
            (:func:`medcyclegan.io.discovery.case_name`).
        mask: body mask file, or folder of masks named like the references, or ``None`` to compute the
            mask from each reference (:func:`medcyclegan.metrics.synthrad_body_mask`).
        standard: ``"synthrad2023"`` (MAE, PSNR, SSIM) or ``"synthrad2025"`` (MAE, PSNR, MS-SSIM).
        tissue_edges: HU of the reference between air/lung and soft tissue, and where bone starts
            (:data:`medcyclegan.metrics.TISSUE_EDGES_HU`).
        figures: a folder to write one PNG panel per case into, ``<case>.png``
            (:func:`medcyclegan.figures.case_panel`); ``None`` draws nothing.
        source: the MR the predictions were made from (a file, or a folder paired by case name with
            the references, every case needing one, on its reference's grid), drawn as the panels'
            first column; only with ``figures``.
        overwrite: a panel may replace an existing file.
        labels: label map (integer voxels, 0 = background) of the reference: a file for a single case,
            or a folder paired by case name with the references, every case needing one, each on its
            reference's grid.
        label_names: an nnU-Net v2 or MSD ``dataset.json`` naming the label values
            (:func:`medcyclegan.label_names.read_label_names`); only with ``labels``. Unnamed values
            are called ``label_<value>``.

    Returns:
        The report; no report file is written (see :meth:`EvaluationReport.write`). With ``labels``
        its metadata holds ``labels``: ``maps`` (the path given), ``names_source``, ``names``
        (value -> name of every label reported), ``unnamed`` (values reported as ``label_<value>``
        though a names file was given), ``named_absent`` (values the file names that no map holds)
        and ``region`` (the rule above).

    Raises:
        ConfigError: unknown ``standard``, bad ``tissue_edges``, ``source`` without ``figures``,
            ``label_names`` without ``labels``.
        InputError: a path is missing or unreadable, folders hold unmatched or duplicate cases, a
            prediction's (or source MR's, or label map's) voxel grid (shape or affine) differs from its
            reference's, a mask, source MR or label map is missing, a mask is on another grid or
            empty, a label map has non-integer or negative values, a label names file is unusable
            (:func:`medcyclegan.label_names.read_label_names`).
        OutputError: a panel exists (without ``overwrite``) or cannot be written; checked for every
            case before any metric is computed.
    """
    metadata = metric_metadata(standard)  # validates ``standard`` before any file is read
    edges = check_tissue_edges(tissue_edges)
    if source is not None and figures is None:
        raise ConfigError("a source MR is only drawn in figures: give a figures folder (--figures) too")
    if label_names is not None and labels is None:
        raise ConfigError("label names name the values of label maps: give the label maps (--labels) too")
    names = LabelNames() if label_names is None else read_label_names(label_names)

    metadata.update(
        {
            "std_ddof": 0,
            "grid": "native voxel grid of each reference, in its file voxel order (no resampling)",
            "tissue_edges_hu": list(edges),
            "tissue_classes": tissue_definitions(edges),
            BODY_DICE_NAME: BODY_DICE_DEFINITION,
            "medcyclegan_version": __version__,
        }
    )
    pairs = _pair_inputs(Path(pred), Path(ref), None if mask is None else Path(mask))
    sources: list[Path | None] = [None] * len(pairs)
    label_paths: list[Path | None] = [None] * len(pairs)
    figure_paths: list[Path | None] = [None] * len(pairs)
    if labels is not None:
        label_paths = _companions_of(pairs, Path(labels), "label map", "label maps")
    if figures is not None:
        if source is not None:
            sources = _sources_of(pairs, Path(source))
        figure_paths = check_figure_paths(figures, [case for case, *_ in pairs], overwrite=overwrite)
    results = [
        _evaluate_case(
            *pair,
            standard=standard,
            edges=edges,
            source_path=source_path,
            figure_path=figure_path,
            overwrite=overwrite,
            label_path=label_path,
            names=names,
        )
        for pair, source_path, figure_path, label_path in zip(pairs, sources, figure_paths, label_paths)
    ]
    cases = [case for case, _ in results]
    written = [str(path) for path in figure_paths if path is not None]
    reported: dict[int, str] = {}
    if labels is not None:
        reported = _report_labels(cases, [by_value for _, by_value in results], names)
        metadata["labels"] = _labels_metadata(Path(labels), names, reported)
    return EvaluationReport(
        standard=standard, metadata=metadata, cases=cases, figures=written, labels=reported
    )


def _report_labels(
    cases: list[CaseResult], by_value: list[dict[int, float]], names: LabelNames
) -> dict[int, str]:
    """Value -> name of every label some case holds; each case gets every one of them (NaN if lacking).

    Args:
        cases: the cases, whose ``label_mae`` is filled in here.
        by_value: each case's label value -> MAE (:func:`medcyclegan.metrics.label_mae`).
        names: the label names.

    Says once which present values the names file does not name, and warns when it names none of them.
    """
    present = sorted({value for values in by_value for value in values})
    reported = {value: names.name_of(value) for value in present}
    for case, values in zip(cases, by_value, strict=True):
        case.label_mae = {label_key(name): values.get(value, math.nan) for value, name in reported.items()}
    if names.path is None:
        if present:
            logger.info("labels are named label_<value> (name them with an nnU-Net or MSD dataset.json)")
        return reported
    unnamed = [value for value in present if value not in names.names]
    if present and len(unnamed) == len(present):
        logger.warning(
            "%s: names none of the label values in the label maps (%s): is it their dataset.json?",
            names.path,
            ", ".join(map(str, present)),
        )
    elif unnamed:
        logger.warning(
            "%s: label value(s) %s occur in the label maps but are not named here; reported as %s",
            names.path,
            ", ".join(map(str, unnamed)),
            ", ".join(names.name_of(value) for value in unnamed),
        )
    absent = [value for value in names.names if value not in reported]
    if absent and len(unnamed) < len(present):
        logger.info(
            "%s: named label(s) in no label map: %s",
            names.path,
            ", ".join(f"{names.names[value]} ({value})" for value in absent),
        )
    return reported


def _labels_metadata(maps: Path, names: LabelNames, reported: dict[int, str]) -> dict[str, Any]:
    """What the report records about its labels (see :func:`evaluate`'s Returns)."""
    named = names.names if names.path is not None else {}
    return {
        "maps": str(maps),
        "names_source": names.source,
        "names": {str(value): name for value, name in reported.items()},
        "unnamed": [value for value in reported if names.path is not None and value not in named],
        "named_absent": [value for value in named if value not in reported],
        "region": LABEL_REGION_RULE,
    }


def check_figure_paths(folder: str | Path, cases: Sequence[str], *, overwrite: bool = False) -> list[Path]:
    """``folder/<case>.png`` for every case, each checked writable before any work.

    Raises:
        OutputError: ``folder`` is a file, a panel exists (without ``overwrite``) or is a folder, or
            the folder cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("is a file; --figures needs a folder", folder)
    return [check_can_write(folder / f"{case}{FIGURE_SUFFIX}", overwrite) for case in cases]


# --------------------------------------------------------------------------- pairing
def _pair_inputs(pred: Path, ref: Path, mask: Path | None) -> list[tuple[str, Path, Path, Path | None]]:
    """(case, pred, ref, mask or None) for every case, sorted by case name.

    A path is one volume if it is a file or a DICOM series folder (``FOLDER::SERIES_UID`` included);
    any other folder holds cases, found recursively and paired by case name.
    """

    for path in (pred, ref, mask):
        if path is not None and not split_series(path)[0].exists():
            raise InputError("does not exist", path)

    def is_single(path: Path) -> bool:
        return path.is_file() or is_volume_path(path)

    if is_single(pred) != is_single(ref):
        folder, single = (ref, pred) if is_single(pred) else (pred, ref)
        raise InputError(f"is a folder of cases but {single} is a single volume: give two of a kind", folder)

    if is_single(pred):
        case = case_name(ref)
        if mask is not None and not is_single(mask):
            return [(case, pred, ref, _masks_of([ref], mask)[0])]
        return [(case, pred, ref, mask)]

    pairing = pair_by_case(find_volumes(pred), find_volumes(ref))
    _refuse_duplicate(pairing.duplicate_source, pred)
    _refuse_duplicate(pairing.duplicate_target, ref)
    only_pred = sorted(case_name(path) for path in pairing.unmatched_sources)
    only_ref = sorted(case_name(path) for path in pairing.unmatched_targets)
    if only_pred or only_ref:
        parts = []
        if only_pred:
            parts.append(f"only in {pred}: {', '.join(only_pred)}")
        if only_ref:
            parts.append(f"only in {ref}: {', '.join(only_ref)}")
        raise InputError(f"{len(only_pred) + len(only_ref)} unmatched case(s); " + "; ".join(parts), pred)
    pairs = sorted(pairing.pairs, key=lambda pair: pair[0])
    if mask is None:
        return [(name, pred_path, ref_path, None) for name, pred_path, ref_path in pairs]
    if is_single(mask):
        raise InputError(
            "is a single mask file but the inputs are folders: give a folder of masks named like the cases",
            mask,
        )
    masks = _masks_of([ref_path for _, _, ref_path in pairs], mask)
    return [(name, pred_path, ref_path, m) for (name, pred_path, ref_path), m in zip(pairs, masks)]


def _masks_of(refs: list[Path], folder: Path) -> list[Path]:
    """The mask of each reference, from ``folder`` by case name; every reference needs one."""
    return _by_case(refs, folder, "mask")


def _by_case(refs: list[Path], folder: Path, what: str) -> list[Path]:
    """The volume of ``folder`` named like each reference (``what`` names it in errors); every
    reference needs one, and volumes of other cases are left alone (a folder of all cases serves an
    evaluation of some)."""
    pairing = pair_by_case(refs, find_volumes(folder))  # raises InputError when the folder holds no volume
    _refuse_duplicate(pairing.duplicate_target, folder)
    if pairing.unmatched_sources:
        missing = ", ".join(case_name(path) for path in pairing.unmatched_sources)
        raise InputError(f"no {what} for case(s): {missing}", folder)
    return [companion for _, _, companion in pairing.pairs]


def _sources_of(pairs: list[tuple[str, Path, Path, Path | None]], source: Path) -> list[Path]:
    """The source MR of every case: ``source`` itself for one case, else by case name from its folder."""
    return _companions_of(pairs, source, "MR", "MRs", single="MR volume")


def _companions_of(
    pairs: list[tuple[str, Path, Path, Path | None]],
    path: Path,
    what: str,
    plural: str,
    single: str | None = None,
) -> list[Path]:
    """A volume per case beside its reference (its MR, its label map): ``path`` itself for one case,
    else by case name from the folder ``path`` (:func:`_by_case`).

    ``what`` and ``plural`` name it in errors, ``single`` (default ``what``) when one file is given
    for several cases.
    """
    if not split_series(path)[0].exists():
        raise InputError("does not exist", path)
    if path.is_file() or is_volume_path(path):
        if len(pairs) > 1:
            raise InputError(
                f"is a single {single or what} but the inputs are folders: give a folder of {plural} "
                "named like the cases",
                path,
            )
        return [path]
    return _by_case([ref for _, _, ref, _ in pairs], path, what)


def _refuse_duplicate(duplicate: tuple[str, Path, Path] | None, folder: Path) -> None:
    """Two volumes of ``folder`` with one case name cannot be paired: an error naming both."""
    if duplicate is not None:
        name, first, second = duplicate
        raise InputError(f"case {name!r} appears twice: {first} and {second}", folder)


# --------------------------------------------------------------------------- one case
def _check_same_grid(
    pred: Volume, ref: Volume, pred_path: Path, ref_path: Path, role: str = "prediction"
) -> None:
    """Shape and world position of every voxel must agree (compared in RAS voxel order).

    ``role`` names the volume checked in the advice ("resample the prediction ...").
    """
    if pred.shape != ref.shape:
        raise InputError(
            f"voxel grid differs from {ref_path}: shape {pred.shape} vs {ref.shape} (RAS order)", pred_path
        )
    if not pred.geometry.same_grid(ref.geometry):
        difference = pred.geometry.affine_difference(ref.geometry)
        raise InputError(
            f"voxel grid differs from {ref_path}: affines differ by up to {difference:.4g} mm "
            f"(resample the {role} onto the reference grid first)",
            pred_path,
        )


def _evaluate_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    mask_path: Path | None,
    standard: str,
    edges: tuple[float, float] = TISSUE_EDGES_HU,
    source_path: Path | None = None,
    figure_path: Path | None = None,
    overwrite: bool = False,
    label_path: Path | None = None,
    names: LabelNames = LabelNames(),
) -> tuple[CaseResult, dict[int, float]]:
    """Scores one case; returns its result and its label value -> MAE (empty without a label map).

    The result's ``label_mae`` is left empty: its keys are those of every case
    (:func:`_report_labels`).
    """
    ref = read_volume(ref_path)
    pred = read_volume(pred_path)
    _check_same_grid(pred, ref, pred_path, ref_path)
    # Read (and its grid checked) before any metric: a wrong MR or label map fails at once.
    source = None if source_path is None else read_volume(source_path)
    if source is not None:
        _check_same_grid(source, ref, source_path, ref_path, role="MR")
    label_map = None
    if label_path is not None:
        label_map = read_volume(label_path)
        _check_same_grid(label_map, ref, label_path, ref_path, role="label map")
    ref_outline = synthrad_body_mask(ref.array)
    if mask_path is None:
        mask_ras = ref_outline
        if not mask_ras.any():
            raise InputError("computed body mask is empty (constant volume?); give a mask", ref_path)
        mask_source = BODY_MASK_METHOD
    else:
        # Voxels > 0 are inside, as in the SynthRAD evaluation code (negative labels are outside).
        mask_ras = np.asarray(read_mask(mask_path, like=ref.geometry, positive_only=True), dtype=bool)
        if mask_ras.shape != ref.shape:
            raise InputError(f"mask shape {mask_ras.shape} differs from {ref_path} {ref.shape}", mask_path)
        if not mask_ras.any():
            raise InputError("mask is empty: no voxel > 0 (voxels > 0 are inside)", mask_path)
        mask_source = f"file: {mask_path}"
    # Back to the reference's file voxel order: the numbers are those of the file's own array (the only
    # order-sensitive step is MS-SSIM's odd-side padding, which then falls where the file puts it).
    to_file = ref.geometry.array_from_ras
    metrics = compute_metrics(standard, to_file(pred.array), to_file(ref.array), to_file(mask_ras))
    for name, value in metrics.items():
        if math.isnan(value):
            logger.warning("%s: %s is undefined (NaN) for case %s", pred_path, name, case)
    # Voxel order does not change a mean or a count: the RAS arrays serve as they are.
    by_tissue = tissue_mae(pred.array, ref.array, mask_ras, edges)
    dice_body = dice_coefficient(synthrad_body_mask(pred.array), ref_outline)
    if math.isnan(dice_body):
        logger.warning(
            "%s: the body outlines of prediction and reference are both empty: Dice is NaN", pred_path
        )
    by_label: dict[int, float] = {}
    if label_map is not None:
        try:
            by_label = label_mae(pred.array, ref.array, label_map.array)
        except ValueError as exc:  # the values of the map: its shape matched above
            raise InputError(str(exc), label_path) from None
        if not by_label:
            logger.warning(
                "%s: label map has no label > 0: every label MAE of case %s is NaN", label_path, case
            )
    scores = {**metrics, **by_tissue, BODY_DICE_NAME: dice_body}
    logger.info("%s: %s", case, ", ".join(f"{name} {value:.4g}" for name, value in scores.items()))
    result = CaseResult(
        case=case,
        pred=str(pred_path),
        ref=str(ref_path),
        mask_source=mask_source,
        metrics=metrics,
        tissue_mae=by_tissue,
        dice_body=dice_body,
    )
    if figure_path is not None:
        panel = case_panel(
            ref.array,
            pred.array,
            mask_ras,
            ref.spacing,
            mr=None if source is None else source.array,
            title=_figure_title(
                result,
                edges,
                None if label_map is None else {names.name_of(value): mae for value, mae in by_label.items()},
            ),
        )
        write_case_panel(figure_path, panel, overwrite=overwrite)
        logger.info("%s: panel written to %s", case, figure_path)
    return result, by_label


def _figure_title(
    case: CaseResult, edges: tuple[float, float], by_label: dict[str, float] | None = None
) -> str:
    """Lines above a case's panel: its SynthRAD metrics, its MAE per tissue class, its body outline
    Dice and, with a label map, its MAE per label (name -> HU), wrapped to lines of about
    :data:`FIGURE_LINE_CHARACTERS`."""
    synthrad = ", ".join(
        f"{COLUMN_HEADERS[name].removesuffix(' [HU]').removesuffix(' [dB]')} {_display(name, value)}"
        + (" HU" if name == "mae" else " dB" if name == "psnr" else "")
        for name, value in case.metrics.items()
    )
    low, high = edges
    tissues = ", ".join(
        f"{label} {_display(name, case.tissue_mae[name])}"
        for label, name in zip(("air/lung", "soft tissue", "bone"), TISSUE_MAE_NAMES)
    )
    lines = [
        f"{case.case}: {synthrad} (inside the body mask)",
        f"MAE by reference HU: {tissues} HU (air/lung < {low:g}, bone >= {high:g})",
        f"body outline Dice {_display(BODY_DICE_NAME, case.dice_body)} (prediction vs reference)",
    ]
    if by_label is not None:
        labels = ", ".join(f"{name} {_display(label_key(name), value)}" for name, value in by_label.items())
        text = f"MAE by label: {labels} HU" if by_label else "MAE by label: no label > 0 in the label map"
        lines += textwrap.wrap(text, FIGURE_LINE_CHARACTERS, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


# --------------------------------------------------------------------------- formatting
def _display(name: str, value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if name.startswith(LABEL_MAE_PREFIX):
        return LABEL_MAE_FORMAT.format(value)
    return DISPLAY_FORMATS[name].format(value)


def _json_safe(value: Any) -> Any:
    """Recursively replaces infinite floats by ``"inf"`` / ``"-inf"`` and NaN by None (not in JSON)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value

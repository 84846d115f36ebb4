"""Pictures a person reads: slices the radiological way, CT windows, and the per-case evaluation panel.

:func:`case_panel` draws one case as a grid: a row per plane (axial, coronal, sagittal mid-slices
through the centre of the body mask), and the columns

    MR (if given) | synthetic CT, CT in a soft-tissue window (W400 L40) | synthetic CT, CT in a bone
    window (W1800 L400) | |synthetic CT - CT| in HU (colour scale 0-500 HU, drawn below the grid)

Every slice is resampled to square pixels of one size for the whole panel, so coronal and sagittal
anatomy keeps its proportions whatever the slice thickness. Slices are displayed the radiological
way (:func:`display_slice`): axial anterior up and the patient's right on the image's left; coronal
superior up, right on the left; sagittal superior up, anterior on the left. Labels are drawn with
Pillow's default font; no plotting library is needed.

:func:`comparison_panel` draws several synthetic CTs of one case (one per model or recipe) as rows of
the same columns, through one plane.

:func:`validation_curve` draws a validation metric of a training run (``val_metrics.csv``) against
the training time, marking the validation that selected ``best.pt``: where the curve flattens, more
training stops helping.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medcyclegan.errors import InputError
from medcyclegan.io.atomic import atomic_path, check_can_write

# (lowest, highest) HU shown, black to white.
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)  # level 40, width 400
BONE_WINDOW_HU = (-500.0, 1300.0)  # level 400, width 1800
ERROR_SCALE_HU = 500.0  # |error| shown from 0 (black) to this (pale yellow) and above
PLANES = ("axial", "coronal", "sagittal")
# The RAS axes each plane's slice keeps (horizontal, vertical before display) and the fixed axis.
PLANE_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
PLANE_ORIENTATION = {"axial": "A up, R left", "coronal": "S up, R left", "sagittal": "S up, A left"}
AXIS_LETTER = ("x", "y", "z")
# Tile sides: at the finest voxel size, but the longest side between these (pixels).
MIN_TILE_PX = 256
MAX_TILE_PX = 512
# Inferno-like colour map of the error: (position in [0, 1], RGB).
ERROR_COLOURS = (
    (0.0, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)
BACKGROUND = (0, 0, 0)
TEXT_COLOUR = (235, 235, 235)
FRAME_COLOUR = (90, 90, 90)  # a line around each tile: air at a tile's edge would merge with the background
GAP = 4  # pixels between tiles


@dataclass
class CasePanel:
    """A drawn panel and where its tiles lie.

    Attributes:
        image: RGB uint8 array (H, W, 3).
        columns: the column headers, left to right (newlines between name and window).
        rows: the planes, top to bottom (:data:`PLANES`).
        boxes: ``(plane, column index) -> (left, top, width, height)`` of each tile, in pixels.
        pixel_mm: the side of one (square) tile pixel in mm.
    """

    image: np.ndarray
    columns: list[str]
    rows: list[str]
    boxes: dict[tuple[str, int], tuple[int, int, int, int]] = field(default_factory=dict)
    pixel_mm: float = 0.0


def display_slice(ras_slice: np.ndarray) -> np.ndarray:
    """A 2D slice of a RAS array, axes (horizontal, vertical), as an image the radiological way.

    Image rows run down the second axis (anterior or superior at the top), image columns run down
    the first axis: an axial (R, A) or coronal (R, S) slice has the patient's right on the image's
    left, a sagittal (A, S) slice has anterior on the left.
    """
    return np.flipud(ras_slice.T)[:, ::-1]


def window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """8-bit grey of ``values``: ``low`` and below black, ``high`` and above white, linear between."""
    scaled = (np.clip(np.asarray(values, dtype=np.float32), low, high) - low) / (high - low)
    return np.round(scaled * 255.0).astype(np.uint8)


def error_colours(error_hu: np.ndarray, scale_hu: float = ERROR_SCALE_HU) -> np.ndarray:
    """RGB (H, W, 3) uint8 of an absolute error map, 0 to ``scale_hu`` HU along :data:`ERROR_COLOURS`."""
    position = np.clip(np.asarray(error_hu, dtype=np.float32) / scale_hu, 0.0, 1.0)
    stops = np.array([stop for stop, _ in ERROR_COLOURS], dtype=np.float32)
    colours = np.array([colour for _, colour in ERROR_COLOURS], dtype=np.float32)
    channels = [np.interp(position, stops, colours[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def body_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel nearest the centre of mass of ``mask`` (the volume's centre for an empty mask)."""
    inside = np.argwhere(np.asarray(mask) > 0)
    if inside.size == 0:
        return tuple(int(size // 2) for size in np.shape(mask))  # type: ignore[return-value]
    return tuple(int(np.round(v)) for v in inside.mean(axis=0))  # type: ignore[return-value]


def pixel_size_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """One square pixel size (mm) for every tile of a panel: the finest voxel size, unless the longest
    field of view would then be drawn with fewer than :data:`MIN_TILE_PX` or more than
    :data:`MAX_TILE_PX` pixels."""
    field_of_view = max(n * s for n, s in zip(shape, spacing))
    size = min(spacing)
    size = max(size, field_of_view / MAX_TILE_PX)
    return min(size, field_of_view / MIN_TILE_PX)


def plane_slice(
    volume: np.ndarray, plane: str, centre: Sequence[int], spacing: Sequence[float], pixel_mm: float
) -> np.ndarray:
    """The ``plane`` slice of a RAS ``volume`` through ``centre``, displayed (:func:`display_slice`)
    and resampled (bilinear, antialiased) to square pixels of ``pixel_mm``; float32."""
    horizontal, vertical, fixed = PLANE_AXES[plane]
    index: list[int | slice] = [slice(None)] * 3
    index[fixed] = int(centre[fixed])
    # After the transpose in display_slice rows follow ``vertical`` and columns ``horizontal``.
    image = display_slice(np.asarray(volume[tuple(index)], dtype=np.float32))
    width = max(1, round(volume.shape[horizontal] * spacing[horizontal] / pixel_mm))
    height = max(1, round(volume.shape[vertical] * spacing[vertical] / pixel_mm))
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _grey_rgb(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """:func:`window` as three equal channels, to sit in an RGB panel."""
    return np.repeat(window(image, low, high)[..., None], 3, axis=-1)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` px; its small fixed bitmap font where Pillow is older than
    10.1 (no ``size``) or built without FreeType (scikit-image only asks for Pillow 9)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_size(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return int(right - left), int(bottom - top)


def case_panel(
    ct: np.ndarray,
    synthetic_ct: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    mr: np.ndarray | None = None,
    title: str = "",
) -> CasePanel:
    """The evaluation panel of one case (see the module docstring).

    Args:
        ct: reference CT in HU, RAS voxel order (:attr:`medcyclegan.io.volume.Volume.array`).
        synthetic_ct: synthetic CT in HU, same grid.
        mask: body mask, same grid (voxels > 0 inside): the slices go through its centre, and an MR is
            shown over its [p1, p99] inside it.
        spacing: voxel size in mm along R, A, S.
        mr: the MR the synthetic CT was made from, same grid; ``None`` leaves its column out.
        title: text drawn above the grid (e.g. the case name and its metrics; newlines allowed).

    Raises:
        ValueError: the arrays are not 3D volumes of one shape.
    """
    volumes = [ct, synthetic_ct, mask] + ([] if mr is None else [mr])
    if any(np.ndim(v) != 3 or np.shape(v) != np.shape(ct) for v in volumes):
        raise ValueError(f"expected 3D volumes of one shape; got {[np.shape(v) for v in volumes]}")
    centre = body_centre(mask)
    pixel_mm = pixel_size_mm(ct.shape, spacing)
    error = np.abs(np.asarray(synthetic_ct, dtype=np.float32) - np.asarray(ct, dtype=np.float32))
    soft = f"W{SOFT_TISSUE_WINDOW_HU[1] - SOFT_TISSUE_WINDOW_HU[0]:g} L{sum(SOFT_TISSUE_WINDOW_HU) / 2:g}"
    bone = f"W{BONE_WINDOW_HU[1] - BONE_WINDOW_HU[0]:g} L{sum(BONE_WINDOW_HU) / 2:g}"
    headers = ([] if mr is None else ["MR"]) + [
        f"synthetic CT\n{soft}",
        f"CT\n{soft}",
        f"synthetic CT\n{bone}",
        f"CT\n{bone}",
        f"|synthetic CT - CT|\n0-{ERROR_SCALE_HU:g} HU",
    ]
    if mr is not None:
        inside = np.asarray(mask) > 0
        mr_low, mr_high = np.percentile(np.asarray(mr)[inside] if inside.any() else mr, [1.0, 99.0])
        mr_high = max(float(mr_high), float(mr_low) + 1e-6)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for plane in PLANES:
        fixed = PLANE_AXES[plane][2]
        tiles: list[np.ndarray] = []
        if mr is not None:
            tiles.append(_grey_rgb(plane_slice(mr, plane, centre, spacing, pixel_mm), mr_low, mr_high))
        synthetic_slice = plane_slice(synthetic_ct, plane, centre, spacing, pixel_mm)
        ct_slice = plane_slice(ct, plane, centre, spacing, pixel_mm)
        for low, high in (SOFT_TISSUE_WINDOW_HU, BONE_WINDOW_HU):
            tiles += [_grey_rgb(synthetic_slice, low, high), _grey_rgb(ct_slice, low, high)]
        tiles.append(error_colours(plane_slice(error, plane, centre, spacing, pixel_mm)))
        label = (
            f"{plane}\nRAS {AXIS_LETTER[fixed]} = {centre[fixed]} (0-{ct.shape[fixed] - 1})"
            f"\n{PLANE_ORIENTATION[plane]}"
        )
        rows.append((label, tiles))
    image, boxes = _layout(rows, headers, title, pixel_mm)
    return CasePanel(
        image=image,
        columns=headers,
        rows=list(PLANES),
        boxes={(PLANES[row], column): box for (row, column), box in boxes.items()},
        pixel_mm=pixel_mm,
    )


def comparison_panel(
    ct: np.ndarray,
    synthetic: Mapping[str, np.ndarray],
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    mr: np.ndarray | None = None,
    plane: str = "axial",
    title: str = "",
) -> CasePanel:
    """Several synthetic CTs of one case side by side: a row per model, one ``plane`` through the body.

    The columns of :func:`case_panel` (MR, synthetic CT and CT in the soft-tissue and the bone
    window, |synthetic CT - CT|), the slice through the centre of ``mask``; the row labels are the
    keys of ``synthetic`` (e.g. ``"cyclegan\nMAE 231 HU"``). :attr:`CasePanel.rows` are those keys.

    Raises:
        ValueError: no synthetic CT, an unknown plane, or volumes not of one 3D shape.
    """
    if not synthetic:
        raise ValueError("comparison_panel needs at least one synthetic CT")
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}")
    volumes = [ct, mask, *synthetic.values()] + ([] if mr is None else [mr])
    if any(np.ndim(v) != 3 or np.shape(v) != np.shape(ct) for v in volumes):
        raise ValueError(f"expected 3D volumes of one shape; got {[np.shape(v) for v in volumes]}")
    centre = body_centre(mask)
    pixel_mm = pixel_size_mm(ct.shape, spacing)
    soft = f"W{SOFT_TISSUE_WINDOW_HU[1] - SOFT_TISSUE_WINDOW_HU[0]:g} L{sum(SOFT_TISSUE_WINDOW_HU) / 2:g}"
    bone = f"W{BONE_WINDOW_HU[1] - BONE_WINDOW_HU[0]:g} L{sum(BONE_WINDOW_HU) / 2:g}"
    headers = ([] if mr is None else ["MR"]) + [
        f"synthetic CT\n{soft}",
        f"CT\n{soft}",
        f"synthetic CT\n{bone}",
        f"CT\n{bone}",
        f"|synthetic CT - CT|\n0-{ERROR_SCALE_HU:g} HU",
    ]
    ct_slice = plane_slice(ct, plane, centre, spacing, pixel_mm)
    fixed_tiles: list[np.ndarray] = []
    if mr is not None:
        inside = np.asarray(mask) > 0
        mr_low, mr_high = np.percentile(np.asarray(mr)[inside] if inside.any() else mr, [1.0, 99.0])
        mr_high = max(float(mr_high), float(mr_low) + 1e-6)
        fixed_tiles.append(_grey_rgb(plane_slice(mr, plane, centre, spacing, pixel_mm), mr_low, mr_high))
    rows: list[tuple[str, list[np.ndarray]]] = []
    for label, volume in synthetic.items():
        synthetic_slice = plane_slice(volume, plane, centre, spacing, pixel_mm)
        tiles = list(fixed_tiles)
        for low, high in (SOFT_TISSUE_WINDOW_HU, BONE_WINDOW_HU):
            tiles += [_grey_rgb(synthetic_slice, low, high), _grey_rgb(ct_slice, low, high)]
        error = np.abs(np.asarray(volume, dtype=np.float32) - np.asarray(ct, dtype=np.float32))
        tiles.append(error_colours(plane_slice(error, plane, centre, spacing, pixel_mm)))
        rows.append((label, tiles))
    fixed = PLANE_AXES[plane][2]
    where = f"{plane}, RAS {AXIS_LETTER[fixed]} = {centre[fixed]}, {PLANE_ORIENTATION[plane]}"
    image, boxes = _layout(rows, headers, f"{title}\n{where}" if title else where, pixel_mm)
    labels = list(synthetic)
    return CasePanel(
        image=image,
        columns=headers,
        rows=labels,
        boxes={(labels[row], column): box for (row, column), box in boxes.items()},
        pixel_mm=pixel_mm,
    )


def _layout(
    rows: list[tuple[str, list[np.ndarray]]], headers: list[str], title: str, pixel_mm: float
) -> tuple[np.ndarray, dict[tuple[int, int], tuple[int, int, int, int]]]:
    """Places labelled tiles on a grid with a title, column headers, row labels and the error scale.

    Returns the image and ``(row, column) -> (left, top, width, height)`` of every tile.
    """
    tile_side = max(max(tile.shape[:2]) for _, tiles in rows for tile in tiles)
    font = _font(int(np.clip(tile_side // 18, 12, 20)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = GAP * 2
    label_width = max(_text_size(measure, label, font)[0] for label, _ in rows) + 2 * pad
    col_widths = [max(tiles[c].shape[1] for _, tiles in rows) for c in range(len(headers))]
    col_widths = [max(w, _text_size(measure, h, font)[0] + pad) for w, h in zip(col_widths, headers)]
    row_heights = [max(tile.shape[0] for tile in tiles) for _, tiles in rows]
    title_height = (_text_size(measure, title, font)[1] + 2 * pad) if title else pad
    header_height = max(_text_size(measure, h, font)[1] for h in headers) + 2 * pad
    note = f"pixel {pixel_mm:.2f} mm; error colour scale:"
    bar_height = _text_size(measure, note, font)[1] * 3 + 3 * pad
    width = label_width + sum(col_widths) + GAP * len(col_widths) + pad
    if title:  # a long title widens the panel rather than being cut off
        width = max(width, _text_size(measure, title, font)[0] + 2 * pad)
    height = title_height + header_height + sum(row_heights) + GAP * len(rows) + bar_height
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((pad, pad), title, fill=TEXT_COLOUR, font=font, spacing=2)
    x_starts = np.cumsum([label_width, *[w + GAP for w in col_widths]])[:-1]
    y = title_height
    for x, col_width, header in zip(x_starts, col_widths, headers):
        text_width, _ = _text_size(measure, header, font)
        draw.multiline_text(
            (int(x + (col_width - text_width) // 2), y + pad),
            header,
            fill=TEXT_COLOUR,
            font=font,
            spacing=2,
            align="center",
        )
    y += header_height
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for row, ((label, tiles), row_height) in enumerate(zip(rows, row_heights)):
        _, label_height = _text_size(measure, label, font)
        draw.multiline_text(
            (pad, y + (row_height - label_height) // 2), label, fill=TEXT_COLOUR, font=font, spacing=2
        )
        for column, (x, col_width, tile) in enumerate(zip(x_starts, col_widths, tiles)):
            left = int(x + (col_width - tile.shape[1]) // 2)
            top = int(y + (row_height - tile.shape[0]) // 2)
            canvas.paste(Image.fromarray(tile), (left, top))
            draw.rectangle(
                [left - 1, top - 1, left + tile.shape[1], top + tile.shape[0]], outline=FRAME_COLOUR, width=1
            )
            boxes[row, column] = (left, top, tile.shape[1], tile.shape[0])
        y += row_height + GAP
    _draw_error_scale(canvas, font, note, x=int(x_starts[-1]), y=y + pad, width=col_widths[-1])
    return np.asarray(canvas), boxes


def _draw_error_scale(
    canvas: Image.Image,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    note: str,
    *,
    x: int,
    y: int,
    width: int,
) -> None:
    """A horizontal colour bar 0 .. :data:`ERROR_SCALE_HU` HU under the error column, with its ticks."""
    draw = ImageDraw.Draw(canvas)
    text_width, text_height = _text_size(draw, note, font)
    draw.text((max(GAP, x - text_width - 2 * GAP), y), note, fill=TEXT_COLOUR, font=font)
    bar = error_colours(np.tile(np.linspace(0.0, ERROR_SCALE_HU, width), (text_height, 1)))
    canvas.paste(Image.fromarray(bar), (x, y))
    ticks = (0.0, ERROR_SCALE_HU / 2, ERROR_SCALE_HU)
    for value in ticks:
        label = f"{value:g}" + (" HU +" if value == ERROR_SCALE_HU else "")
        label_width, _ = _text_size(draw, label, font)
        position = x + round(value / ERROR_SCALE_HU * (width - 1))
        left = min(max(x, position - label_width // 2), x + width - label_width)
        draw.line([(position, y + text_height), (position, y + text_height + 3)], fill=TEXT_COLOUR)
        draw.text((left, y + text_height + 5), label, fill=TEXT_COLOUR, font=font)


def write_case_panel(path: str | Path, panel: CasePanel, *, overwrite: bool = False) -> Path:
    """Writes a panel (:func:`case_panel`) as PNG atomically; an existing file only with ``overwrite``.

    Raises:
        OutputError: ``path`` exists (without ``overwrite``, also when it appears while writing) or
            cannot be written.
    """
    path = check_can_write(path, overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(panel.image).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------
# Validation curve
# ---------------------------------------------------------------------------------------------------

CURVE_SIZE = (800, 480)  # pixels (width, height) of a validation curve
CURVE_COLOUR = (249, 142, 9)
BEST_COLOUR = (120, 220, 120)
GRID_COLOUR = (60, 60, 60)
# The val_metrics.csv column of the training time at each validation (seconds, validation excluded).
TIME_COLUMN = "train_seconds"


@dataclass
class ValidationCurve:
    """A drawn validation curve and what it shows.

    Attributes:
        image: RGB uint8 array (H, W, 3).
        metric: the plotted column of ``val_metrics.csv`` (e.g. ``"val/mae"``).
        x_column: ``"train_seconds"``, or ``"step"`` for a run logged before the training clock.
        points: ``(x, step, value)`` of every validation with a finite value, in log order.
        best: the point marked as the best (lowest, or highest with ``mode="max"``).
    """

    image: np.ndarray
    metric: str
    x_column: str
    points: list[tuple[float, int, float]]
    best: tuple[float, int, float]


def read_validation_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``val_metrics.csv``.

    Raises:
        InputError: the file cannot be read or holds no validation row.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the validation log ({exc})", path) from None
    if not rows:
        raise InputError("holds no validation row (did the run validate? it needs validation data)", path)
    return rows


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def validation_curve(
    rows: Sequence[Mapping[str, str | float]],
    *,
    metric: str = "val/mae",
    unit: str | None = None,
    mode: str = "min",
    size: tuple[int, int] = CURVE_SIZE,
    source: str | Path | None = None,
) -> ValidationCurve:
    """Draws ``metric`` against the training time (``train_seconds``; ``step`` in older logs).

    The steps label the validations along the top axis; the best validation (the lowest value, or the
    highest with ``mode="max"``: what selected ``best.pt`` when the metric was ``train.best_metric``)
    is ringed and named.

    Args:
        rows: validation rows (``val_metrics.csv``: ``step``, ``train_seconds``, the metrics).
        metric: the column to plot.
        unit: shown with the metric on the vertical axis (e.g. ``"HU"``).
        mode: ``"min"`` or ``"max"``: which value is the best.
        size: the image's (width, height) in pixels.
        source: the file the rows came from, named in errors.

    Raises:
        InputError: no row has a finite value of ``metric`` (the message lists the columns).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max; got {mode!r}")
    columns = list(rows[0]) if rows else []
    x_column = TIME_COLUMN if TIME_COLUMN in columns else "step"
    points: list[tuple[float, int, float]] = []
    for row in rows:
        try:
            value, x, step = float(row[metric]), float(row[x_column]), int(float(row["step"]))
        except (KeyError, TypeError, ValueError):
            continue  # a row before the metric existed (column added later), or a blank value
        if math.isfinite(value) and math.isfinite(x):
            points.append((x, step, value))
    if not points:
        raise InputError(
            f"no validation row has a value of {metric}; the columns are {', '.join(columns) or 'none'}",
            source,
        )
    pick = min if mode == "min" else max
    best = pick(points, key=lambda p: p[2])  # the first of equal values, as the trainer keeps it
    width, height = size
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(13)
    _, text_h = _text_size(draw, "0", font)
    left, right = 70, width - 20
    top, bottom = 3 * text_h + 30, height - 2 * text_h - 24
    xs = [p[0] for p in points]
    values = [p[2] for p in points]
    x_low, x_high = 0.0, max(max(xs), 1e-9)
    v_low, v_high = min(values), max(values)
    pad = (v_high - v_low) * 0.08 or max(abs(v_high) * 0.05, 1e-6)
    v_low, v_high = v_low - pad, v_high + pad

    def px(x: float, value: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (value - v_low) / (v_high - v_low) * (bottom - top),
        )

    for tick in _nice_ticks(v_low, v_high, 8):
        _, y = px(x_low, tick)
        draw.line([(left, y), (right, y)], fill=GRID_COLOUR)
        label = _tick_label(tick)
        w, h = _text_size(draw, label, font)
        draw.text((left - w - 6, y - h / 2), label, fill=TEXT_COLOUR, font=font)
    for tick in _nice_ticks(x_low, x_high, 6):
        x, _ = px(tick, v_low)
        draw.line([(x, bottom), (x, bottom + 4)], fill=TEXT_COLOUR)
        label = _tick_label(tick)
        w, _ = _text_size(draw, label, font)
        draw.text((x - w / 2, bottom + 6), label, fill=TEXT_COLOUR, font=font)
    # The steps along the top, at (at most about 8 of) the validations themselves.
    every = max(1, math.ceil(len(points) / 8))
    for x_value, step, _ in points[::every]:
        x, _ = px(x_value, v_low)
        draw.line([(x, top - 4), (x, top)], fill=TEXT_COLOUR)
        label = str(step)
        w, h = _text_size(draw, label, font)
        draw.text((x - w / 2, top - h - 8), label, fill=TEXT_COLOUR, font=font)
    _, step_h = _text_size(draw, "step", font)
    draw.text((8, top - step_h - 8), "step", fill=TEXT_COLOUR, font=font)
    draw.rectangle([left, top, right, bottom], outline=FRAME_COLOUR)
    line = [px(x, v) for x, _, v in points]
    if len(line) > 1:
        draw.line(line, fill=CURVE_COLOUR, width=2)
    for x, y in line:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=CURVE_COLOUR)
    bx, by = px(best[0], best[2])
    draw.ellipse([bx - 7, by - 7, bx + 7, by + 7], outline=BEST_COLOUR, width=2)
    x_name = "training time [s]" if x_column == TIME_COLUMN else "step"
    value_name = metric + (f" [{unit}]" if unit else "")
    best_text = f"best: {best[2]:.4g}{' ' + unit if unit else ''} at step {best[1]}" + (
        f", {best[0]:.0f} s" if x_column == TIME_COLUMN else ""
    )
    title = f"validation {value_name} vs {x_name} (top: step); {best_text}"
    draw.text((left, 6), title, fill=TEXT_COLOUR, font=font)
    w, _ = _text_size(draw, x_name, font)
    draw.text(((left + right - w) / 2, height - text_h - 8), x_name, fill=TEXT_COLOUR, font=font)
    label_w, label_h = _text_size(draw, best_text, font)
    label_x = min(max(left + 4, bx - label_w / 2), right - label_w - 4)
    label_y = by + 12 if by + 12 + label_h < bottom else by - 12 - label_h
    draw.text((label_x, label_y), best_text, fill=BEST_COLOUR, font=font)
    return ValidationCurve(
        image=np.asarray(image), metric=metric, x_column=x_column, points=points, best=best
    )


def write_validation_curve(
    path: str | Path,
    source: str | Path | Sequence[Mapping[str, str | float]],
    *,
    metric: str = "val/mae",
    unit: str | None = None,
    mode: str = "min",
    size: tuple[int, int] = CURVE_SIZE,
    overwrite: bool = False,
) -> ValidationCurve:
    """Writes :func:`validation_curve` of a ``val_metrics.csv`` (or its rows) as PNG atomically.

    Args:
        path: the PNG to write; an existing file only with ``overwrite``.
        source: a run's ``val_metrics.csv`` or its rows.
        metric, unit, mode, size: see :func:`validation_curve`.

    Raises:
        InputError: the log cannot be read or has no value of ``metric``.
        OutputError: ``path`` exists (without ``overwrite``) or cannot be written.
    """
    path = check_can_write(path, overwrite)
    if isinstance(source, (str, Path)):
        rows: Sequence[Mapping[str, str | float]] = read_validation_rows(source)
        where: str | Path | None = source
    else:
        rows, where = source, None
    curve = validation_curve(rows, metric=metric, unit=unit, mode=mode, size=size, source=where)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(curve.image).save(tmp, format="PNG")
    return curve

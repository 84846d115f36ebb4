"""ONNX export and conversion through onnxruntime: parity in HU with the torch path, for every kind.

Every translator kind (:data:`onnx_kinds.KINDS`) is exported once per session (``exported``); the
conversions of the phantom and of the real brain MR through the ``.onnx`` file must equal those of
the checkpoint through torch within 1 HU.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_kinds import KINDS, kind_checkpoint
from tiny import TrainedRun

from medcyclegan.convert import load_model, translate_volume
from medcyclegan.export import export_model
from medcyclegan.models import model_class
from medcyclegan.onnx_model import INPUT_NAME, METADATA_PREFIX, OnnxTranslator, read_onnx_model

# The largest difference accepted between the ONNX and the torch conversion of a CT, HU.
MAX_HU_DIFFERENCE = 1


@dataclass(frozen=True)
class Exported:
    """One kind's tiny checkpoint and its export."""

    checkpoint: Path
    onnx: Path


@pytest.fixture(scope="session")
def exported(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Every kind of :data:`KINDS` as a checkpoint and as ``<kind>.onnx`` (exported once: seconds each)."""
    root = tmp_path_factory.mktemp("onnx_kinds")
    models = {}
    for kind in KINDS:
        checkpoint = kind_checkpoint(trained_run, kind, root / kind / "checkpoints" / "last.pt")
        written, _ = export_model(checkpoint, root / f"{kind}.onnx")
        models[kind] = Exported(checkpoint, written)
    return models


def hu_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.int16
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def both_conversions(entry: Exported, volume: Path, **options: object) -> tuple[np.ndarray, np.ndarray]:
    """The CT of ``volume`` through torch (the checkpoint) and through onnxruntime (the .onnx file)."""
    torch_model = load_model(entry.checkpoint, device="cpu")
    onnx_model = load_model(entry.onnx, device="cpu")
    assert torch_model.backend == "torch" and onnx_model.backend == "onnxruntime"
    assert isinstance(onnx_model.generator, OnnxTranslator)
    ours, _, _ = translate_volume(torch_model, volume, batch_size=4, **options)  # type: ignore[arg-type]
    theirs, _, _ = translate_volume(onnx_model, volume, batch_size=4, **options)  # type: ignore[arg-type]
    return ours, theirs


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_onnx_conversion_of_the_phantom_is_the_torch_one_within_1_hu(
    kind: str, exported: dict[str, Exported], trained_run: TrainedRun
) -> None:
    ours, theirs = both_conversions(exported[kind], trained_run.mr / "case00.nii.gz")
    # Random weights, scaled: the translation varies across the head (a constant would prove nothing).
    assert np.ptp(ours) > 100, np.ptp(ours)
    assert hu_difference(ours, theirs) <= MAX_HU_DIFFERENCE


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_onnx_conversion_of_a_real_brain_mr_is_the_torch_one_within_1_hu(
    kind: str, exported: dict[str, Exported], real_data_dir: Path
) -> None:
    ours, theirs = both_conversions(exported[kind], real_data_dir / "brain1_image.nrrd")
    assert np.ptp(ours) > 100, np.ptp(ours)
    assert hu_difference(ours, theirs) <= MAX_HU_DIFFERENCE


def test_the_file_carries_what_convert_needs(exported: dict[str, Exported]) -> None:
    entry = exported["resnet"]
    model = onnx.load(str(entry.onnx))
    props = {p.key[len(METADATA_PREFIX) :]: p.value for p in model.metadata_props}
    assert props["format"] == "medcyclegan-onnx" and props["format_version"] == "1"
    assert props["checkpoint_sha256"] == hashlib.sha256(entry.checkpoint.read_bytes()).hexdigest()
    assert (
        props["source_modality"] == "mr" and props["target_modality"] == "ct" and props["direction"] == "AB"
    )
    assert (
        props["context_slices"] == "0" and props["stride_multiple"] == "4" and props["min_input_size"] == "5"
    )
    _, info = read_onnx_model(entry.onnx)
    assert info.cfg.normalisation == load_model(entry.checkpoint, device="cpu").cfg.normalisation
    # Dynamic batch, height and width; the 2k+1 channels fixed.
    (slices,) = [i for i in model.graph.input if i.name == INPUT_NAME]
    dims = slices.type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False] and dims[1].dim_value == 1
    # Self-contained: every weight inside the file.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert [o.name for o in model.graph.output] == ["translation"]
    assert [o.name for o in onnx.load(str(exported["resnet-attention"].onnx)).graph.output] == [
        "translation",
        "attention",
    ]


def test_the_attention_mask_comes_from_the_onnx_model_too(
    exported: dict[str, Exported], trained_run: TrainedRun
) -> None:
    entry = exported["resnet-attention"]
    volume = trained_run.mr / "case00.nii.gz"
    _, _, ours = translate_volume(load_model(entry.checkpoint, device="cpu"), volume, return_attention=True)
    _, _, theirs = translate_volume(load_model(entry.onnx, device="cpu"), volume, return_attention=True)
    assert ours is not None and theirs is not None and ours.std() > 1e-3
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_munit_samples_from_the_onnx_style_input_equal_torch_ones(
    exported: dict[str, Exported], trained_run: TrainedRun
) -> None:
    from medcyclegan.convert import draw_styles, translate_samples
    from medcyclegan.io.readers import read_volume

    entry = exported["munit"]
    volume = read_volume(trained_run.mr / "case00.nii.gz")
    torch_model, onnx_model = load_model(entry.checkpoint, device="cpu"), load_model(entry.onnx, device="cpu")
    assert onnx_model.has_styles and onnx_model.generator.style_dim == 8  # type: ignore[union-attr]
    styles = draw_styles(8, 3, seed=5)
    mean_t, std_t = translate_samples(torch_model, volume, styles, batch_size=4)
    mean_o, std_o = translate_samples(onnx_model, volume, styles, batch_size=4)
    assert std_t.max() > 10  # the styles change the translation
    assert hu_difference(mean_t, mean_o) <= MAX_HU_DIFFERENCE
    np.testing.assert_allclose(std_o, std_t, atol=MAX_HU_DIFFERENCE)


def test_a_checkpoint_converts_on_onnxruntime_in_memory(
    exported: dict[str, Exported], trained_run: TrainedRun
) -> None:
    entry = exported["unet"]
    volume = trained_run.mr / "case00.nii.gz"
    ours, _, _ = translate_volume(load_model(entry.checkpoint, device="cpu"), volume)
    in_memory = load_model(entry.checkpoint, device="cpu", backend="onnxruntime")
    assert in_memory.backend == "onnxruntime" and in_memory.checkpoint == entry.checkpoint
    theirs, _, _ = translate_volume(in_memory, volume)
    assert hu_difference(ours, theirs) <= MAX_HU_DIFFERENCE


def test_the_exported_translator_is_the_weight_average_where_the_run_kept_one(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    checkpoint = kind_checkpoint(trained_run, "resnet", tmp_path / "ema.pt", extra={"model.ema_decay": 0.9})
    written, _ = export_model(checkpoint, tmp_path / "ema.onnx")
    volume = trained_run.mr / "case00.nii.gz"
    averaged, _, _ = translate_volume(load_model(checkpoint, device="cpu"), volume)
    theirs, _, _ = translate_volume(load_model(written, device="cpu"), volume)
    assert hu_difference(averaged, theirs) <= MAX_HU_DIFFERENCE
    # The average (the initial weights) is not G_AB (scaled): G_AB's translation differs.
    model = load_model(checkpoint, device="cpu")
    plain_generator = model_class("cyclegan").build_translator(model.cfg, "AB")
    plain_generator.load_state_dict(torch.load(checkpoint, weights_only=True)["G_AB"])
    plain, _, _ = translate_volume(dataclasses.replace(model, generator=plain_generator.eval()), volume)
    assert hu_difference(plain, theirs) > 10


def test_the_other_direction_exports_with_to(
    exported: dict[str, Exported], trained_run: TrainedRun, tmp_path: Path
) -> None:
    entry = exported["unit"]
    written, info = export_model(entry.checkpoint, tmp_path / "back.onnx", to="mr")
    assert (info.direction, info.source_modality, info.target_modality) == ("BA", "ct", "mr")
    volume = trained_run.ct / "case00.nii.gz"
    ours, _, _ = translate_volume(load_model(entry.checkpoint, to="mr", device="cpu"), volume)
    theirs, _, _ = translate_volume(load_model(written, device="cpu"), volume)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, atol=1e-3 * float(np.ptp(ours)))


def test_the_vit_token_coordinates_of_an_export_are_the_eager_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcyclegan.nets.vit_unet import token_coordinates

    cpu = torch.device("cpu")
    eager = {(h, w): token_coordinates(h, w, cpu) for h in (1, 2, 3, 7, 64) for w in (1, 5, 33)}
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for (h, w), expected in eager.items():
        torch.testing.assert_close(token_coordinates(h, w, cpu), expected, atol=1e-6, rtol=0)


def test_a_2_5d_model_exports_with_its_2k_plus_1_channels(trained_run: TrainedRun, tmp_path: Path) -> None:
    checkpoint = kind_checkpoint(trained_run, "resnet", tmp_path / "k2.pt", extra={"data.context_slices": 2})
    written, info = export_model(checkpoint, tmp_path / "k2.onnx")
    assert info.in_channels == 5
    (slices,) = [i for i in onnx.load(str(written)).graph.input if i.name == INPUT_NAME]
    assert slices.type.tensor_type.shape.dim[1].dim_value == 5
    ours, theirs = both_conversions(Exported(checkpoint, written), trained_run.mr / "case00.nii.gz")
    assert np.ptp(ours) > 100 and hu_difference(ours, theirs) <= MAX_HU_DIFFERENCE

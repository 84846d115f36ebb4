"""ONNX from the command line: export, convert, info, and every refusal as one line (exit 2).

A model file is untrusted: files without our metadata, corrupted or truncated ones, external data,
operators of other domains and metadata whose config fails validation are refused before
onnxruntime runs anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_kinds import kind_checkpoint
from tiny import TrainedRun, one_error_line

import medcyclegan.onnx_model
from medcyclegan.onnx_model import METADATA_PREFIX


@pytest.fixture(scope="module")
def resnet(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny ResNet checkpoint, its export through the CLI path's library call)."""
    from medcyclegan.export import export_model

    root = tmp_path_factory.mktemp("onnx_errors")
    checkpoint = kind_checkpoint(trained_run, "resnet", root / "run" / "checkpoints" / "last.pt")
    written, _ = export_model(checkpoint, root / "resnet.onnx")
    return checkpoint, written


def edited(source: Path, target: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """A copy of the model ``source`` changed by ``edit(model)``, saved as one file ``target``."""
    model = onnx.load(str(source))
    edit(model)
    target.write_bytes(model.SerializeToString())
    return target


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == METADATA_PREFIX + key:
            prop.value = value


# ------------------------------------------------------------------------------------ the happy path
def test_export_convert_and_info_from_the_command_line(cli, trained_run: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "models" / "sct.onnx"
    result = cli("export", trained_run.run, "-o", out)
    assert result.code == 0, result.err
    assert str(out) in result.out and "mr -> ct" in result.out and out.is_file()
    source = trained_run.mr / "case00.nii.gz"
    for args, name in (
        (("--model", out), "onnx.nii.gz"),
        (("--model", trained_run.run, "--backend", "onnxruntime"), "memory.nii.gz"),
        (("--model", trained_run.run, "--backend", "torch"), "torch.nii.gz"),
    ):
        result = cli("convert", source, "-o", tmp_path / name, "--device", "cpu", *args)
        assert result.code == 0, result.err
    onnx_ct, torch_ct = (np.asarray(nib.load(tmp_path / n).dataobj) for n in ("onnx.nii.gz", "torch.nii.gz"))
    memory_ct = np.asarray(nib.load(tmp_path / "memory.nii.gz").dataobj)
    assert (
        np.abs(onnx_ct.astype(int) - torch_ct).max() <= 1
        and np.abs(memory_ct.astype(int) - torch_ct).max() <= 1
    )
    # The header says which model file made it.
    assert "model models/sct.onnx" in nib.load(tmp_path / "onnx.nii.gz").header["descrip"].item().decode()
    info = cli("info", out)
    assert info.code == 0, info.err
    assert "mr -> ct" in info.text and "slices" in info.text and "sha256" in info.text
    summary = json.loads(cli("info", out, "--json").out)
    assert summary["direction"] == "mr -> ct" and summary["opset"] == 18 and summary["style_dim"] is None
    assert summary["normalisation"]["tgt"]["method"] == "window"


def test_the_attention_mask_is_written_from_an_onnx_model(
    cli, trained_run: TrainedRun, tmp_path: Path
) -> None:
    checkpoint = kind_checkpoint(trained_run, "resnet-attention", tmp_path / "att.pt")
    model = tmp_path / "att.onnx"
    assert cli("export", checkpoint, "-o", model).code == 0
    result = cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "sct.nii.gz", "--model", model,
                 "--save-attention")  # fmt: skip
    assert result.code == 0, result.err
    assert (tmp_path / "sct_attention.nii.gz").is_file()


def test_export_refuses_an_existing_output_without_overwrite(cli, resnet, tmp_path: Path) -> None:
    checkpoint, _ = resnet
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    line = one_error_line(cli("export", checkpoint, "-o", out))
    assert str(out) in line and "--overwrite" in line and out.read_bytes() == b"keep me"
    assert cli("export", checkpoint, "-o", out, "--overwrite").code == 0
    assert out.read_bytes() != b"keep me" and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("-o", "model.nii.gz"), "*.onnx"),
        (("-o", "m.onnx", "--opset", "12"), "--opset"),
        (("-o", "m.onnx", "--to", "pet"), "--to"),
    ],
)
def test_export_refuses_bad_options(cli, resnet, tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    checkpoint, _ = resnet
    args = tuple(str(tmp_path / a) if a.endswith((".onnx", ".gz")) else a for a in args)
    assert words in one_error_line(cli("export", checkpoint, *args))


@pytest.mark.parametrize("kind", ["cut", "pix2pix"])
def test_export_of_a_one_way_model_in_the_other_direction_is_one_line(
    cli, kind: str, trained_run: TrainedRun, tmp_path: Path
) -> None:
    extra = {"model.kind": "pix2pix", "model.generator": "resnet"} if kind == "pix2pix" else {}
    checkpoint = kind_checkpoint(
        trained_run, "cut" if kind == "cut" else "resnet", tmp_path / "m.pt", extra=extra
    )
    line = one_error_line(cli("export", checkpoint, "-o", tmp_path / "m.onnx", "--to", "mr"))
    assert str(checkpoint) in line and "only mr -> ct" in line
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------ hostile model files
def foreign_model(path: Path) -> Path:
    """A valid ONNX model of someone else's: Identity, no medcyclegan metadata."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def with_external_weight(model: onnx.ModelProto) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")


def with_custom_operator(model: onnx.ModelProto) -> None:
    node = model.graph.node[0]
    node.domain = "com.example.evil"
    model.opset_import.add(domain="com.example.evil", version=1)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda src, dst: foreign_model(dst), "no medcyclegan metadata"),
        (lambda src, dst: written(dst, b"\x08\x07garbage" * 50), "ONNX"),
        (lambda src, dst: written(dst, src.read_bytes()[: src.stat().st_size // 2]), "truncated"),
        (lambda src, dst: written(dst, b""), "empty"),
        (lambda src, dst: edited(src, dst, with_external_weight), "external file"),
        (lambda src, dst: edited(src, dst, with_custom_operator), "com.example.evil"),
        (
            lambda src, dst: edited(
                src, dst, lambda m: set_metadata(m, "config", "data:\n  image_size: -3\n")
            ),
            "stored config is invalid",
        ),
        (
            lambda src, dst: edited(src, dst, lambda m: set_metadata(m, "config", ": [")),
            "stored config is invalid",
        ),
        (
            lambda src, dst: edited(src, dst, lambda m: set_metadata(m, "target_modality", "mr")),
            "contradicts its config",
        ),
        (lambda src, dst: edited(src, dst, lambda m: set_metadata(m, "format_version", "99")), "newer"),
        (
            lambda src, dst: edited(src, dst, lambda m: set_metadata(m, "stride_multiple", "x")),
            "stride_multiple",
        ),
        (
            lambda src, dst: edited(src, dst, lambda m: set_metadata(m, "context_slices", "2")),
            "context_slices",
        ),
    ],
    ids=[
        "foreign",
        "garbage",
        "truncated",
        "empty",
        "external-data",
        "custom-operator",
        "invalid-config",
        "unparsable-config",
        "contradicting-modality",
        "newer-format",
        "bad-stride",
        "other-context",
    ],
)
def test_convert_refuses_a_bad_model_file_in_one_line(
    cli, resnet, trained_run: TrainedRun, tmp_path: Path, make, words: str
) -> None:
    _, good = resnet
    bad = make(good, tmp_path / "bad.onnx")
    out = tmp_path / "sct.nii.gz"
    line = one_error_line(cli("convert", trained_run.mr / "case00.nii.gz", "-o", out, "--model", bad))
    assert str(bad) in line and words in line, line
    assert not out.exists()
    assert words in one_error_line(cli("info", bad))


def test_the_graph_must_have_the_inputs_its_metadata_names(
    cli, resnet, trained_run: TrainedRun, tmp_path: Path
) -> None:
    _, good = resnet
    bad = edited(good, tmp_path / "renamed.onnx", lambda m: set_metadata(m, "style_dim", "8"))
    line = one_error_line(
        cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", bad)
    )
    assert "graph inputs" in line and str(bad) in line


# ------------------------------------------------------------------------------------ wrong options
def test_samples_need_a_style_input(cli, resnet, trained_run: TrainedRun, tmp_path: Path) -> None:
    _, model = resnet
    line = one_error_line(cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", model,
                              "--samples", 3))  # fmt: skip
    assert str(model) in line and "style input" in line


def test_an_onnx_model_translates_its_one_direction(
    cli, resnet, trained_run: TrainedRun, tmp_path: Path
) -> None:
    _, model = resnet
    line = one_error_line(cli("convert", trained_run.ct / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", model,
                              "--to", "mr"))  # fmt: skip
    assert str(model) in line and "--to mr" in line


def test_an_onnx_model_does_not_run_on_torch(cli, resnet, trained_run: TrainedRun, tmp_path: Path) -> None:
    _, model = resnet
    line = one_error_line(cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", model,
                              "--backend", "torch"))  # fmt: skip
    assert str(model) in line and "onnxruntime" in line
    line = one_error_line(
        cli("convert", trained_run.mr / "case00.nii.gz", "--model", model, "--backend", "tensorrt")
    )
    assert "--backend must be one of" in line


def test_onnxruntime_missing_says_how_to_install_it(
    cli, trained_run: TrainedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(medcyclegan.onnx_model, "_onnxruntime", None)
    line = one_error_line(cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model",
                              trained_run.run, "--backend", "onnxruntime"))  # fmt: skip
    assert "pip install onnxruntime" in line
    # auto falls back to torch.
    result = cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", trained_run.run,
                 "--backend", "auto", "--device", "cpu")  # fmt: skip
    assert result.code == 0, result.err


def test_cuda_on_an_onnxruntime_without_it_is_one_line(
    cli, resnet, trained_run: TrainedRun, tmp_path: Path
) -> None:
    _, model = resnet
    if "CUDAExecutionProvider" in medcyclegan.onnx_model.onnxruntime().get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    line = one_error_line(cli("convert", trained_run.mr / "case00.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", model,
                              "--device", "cuda"))  # fmt: skip
    assert "CUDA" in line and "onnxruntime-gpu" in line


def test_an_export_with_a_size_fixed_inside_the_graph_is_refused_not_written(
    cli, trained_run: TrainedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import medcyclegan.nets.vit_unet

    def linspace_coordinates(height: int, width: int, device: torch.device) -> torch.Tensor:
        # torch.linspace, as in eager mode: the exporter fixes its length at the traced example's.
        rows, cols = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height, device=device),
            torch.linspace(-1.0, 1.0, width, device=device),
            indexing="ij",
        )
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)

    monkeypatch.setattr(medcyclegan.nets.vit_unet, "token_coordinates", linspace_coordinates)
    checkpoint = kind_checkpoint(trained_run, "vit-unet", tmp_path / "vit.pt")
    line = one_error_line(cli("export", checkpoint, "-o", tmp_path / "vit.onnx"))
    assert str(checkpoint) in line and "not written" in line
    assert not (tmp_path / "vit.onnx").exists()


def test_onnxruntime_takes_the_threads_torch_was_given(resnet) -> None:
    import torch

    from medcyclegan.convert import load_model

    _, model = resnet
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what --threads 1 sets
        session = load_model(model, device="cpu").generator.session  # type: ignore[union-attr]
        assert session.get_session_options().intra_op_num_threads == 1
        assert session.get_providers() == ["CPUExecutionProvider"]
    finally:
        torch.set_num_threads(threads)


def test_augment_takes_an_onnx_model(cli, resnet, tmp_path: Path) -> None:
    from medcyclegan.sample_data import write_sample_dataset

    _, model = resnet
    data = tmp_path / "data"
    write_sample_dataset(data, n_train_mr=1, n_train_ct=1, n_test=1, shape=(40, 44, 8))
    result = cli("augment", "--images", data / "test" / "mr", "--labels", data / "test" / "labels", "--model", model,
                 "--out", tmp_path / "raw", "--dataset-id", 7)  # fmt: skip
    assert result.code == 0, result.err
    assert "OK: 1 case" in result.out

"""The ``medcyclegan`` command line: help, usage errors, one-line option errors, and each verb's output.

Runs ``medcyclegan.cli.main`` in-process (the console entry point, with its error handling) and checks
what a user sees: the exit status, stdout (results) and stderr (one ``error:`` line, no traceback).
The fault matrix of issue 6 (bad inputs, outputs, checkpoints, signals) is in ``test_reliability.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import TrainedRun, head, one_error_line, save_volume

from medcyclegan import __version__, parallel
from medcyclegan.io.readers import read_volume

VERBS = ("train", "convert", "evaluate", "info", "augment", "sample-data", "demo")


@pytest.fixture(scope="module")
def run_dir(trained_run: TrainedRun) -> Path:
    """The session's tiny MR -> CT run (one step, last.pt only); read-only."""
    return trained_run.run


# ------------------------------------------------------------------------------- help and usage


def test_help_lists_every_verb_and_version_prints(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for verb in VERBS:
        assert verb in result.out
    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"medcyclegan {__version__}"


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(cli, verb: str) -> None:
    result = cli(verb, "--help")
    assert result.code == 0 and "Usage:" in result.out and "--" in result.out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("bogus",), "No such command"),
        (("convert",), "Missing argument"),
        (("convert", "x.nii.gz", "--batch-size", "many"), "--batch-size"),
        (("evaluate", "--ref", "x"), "--pred"),
    ],
)
def test_usage_errors_exit_2_in_one_line(cli, args: tuple[str, ...], expected: str) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: medcyclegan") and expected in lines[0]
    assert "-h'" in lines[0] and not set(lines[0]) & set("╭╰│─")  # says where help is; no box


def test_the_bare_command_prints_its_help(cli) -> None:
    result = cli()
    assert result.code == 2 and "Usage:" in result.out + result.err and "convert" in result.out + result.err


def test_a_command_exit_status_is_kept(cli) -> None:
    assert cli("--version").code == 0
    assert cli("convert", "--help").code == 0


# ---------------------------------------------------------------------- option errors: one line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("convert", "{mr}", "-m", "{run}", "--to", "pet"), "error: --to must be ct or mr; got 'pet'"),
        (("convert", "{mr}", "-m", "{run}", "--batch-size", "0"), "error: --batch-size must be >= 1; got 0"),
        (("convert", "{mr}", "-m", "{run}", "--device", "cuda"), "no CUDA GPU is available"),
        (("convert", "{mr}", "-m", "{run}", "-o", "{tmp}/x.txt"), "x.txt: unknown output format"),
        (("convert", "{tmp}", "-m", "{run}"), "a folder input needs -o OUTPUT_FOLDER"),
        (("convert", "{mr}", "-m", "{tmp}/nowhere"), "nowhere: no such run folder or checkpoint"),
        (("convert", "{tmp}/missing.nii.gz", "-m", "{run}"), "missing.nii.gz: no such file or folder"),
        (
            ("convert", "{mr}", "-m", "{run}", "--save-attention", "-o", "{tmp}/a.nii.gz"),
            "--save-attention needs a model trained with --generator resnet-attention",
        ),
        (("train", "--resume"), "error: --resume needs --out RUN_DIR"),
        (("train", "--src", "{tmp}", "--tgt", "{tmp}", "-c", "nope"), "no built-in config 'nope'"),
        (("train", "--src", "{tmp}", "--tgt", "{tmp}", "--set", "oops"), "must look like section.key=value"),
        (
            ("train", "--src", "{tmp}", "--tgt", "{tmp}", "--set", "data.nope=1"),
            "unknown config key 'data.nope'",
        ),
        (("train", "--src", "{tmp}", "--tgt", "{tmp}", "--image-size", "8"), "data.image_size must be >= 16"),
        (
            ("train", "--src", "{tmp}", "--tgt", "{tmp}", "--generator", "no-such-net"),
            "model.generator must be one of",
        ),
        (("evaluate", "--pred", "{mr}", "--ref", "{mr}", "--standard", "x"), "unknown standard 'x'"),
        (("augment", "--check", "{tmp}", "--images", "{tmp}"), "--check takes only the dataset folder"),
        (("augment", "--images", "{tmp}"), "--labels, --out required"),
    ],
)
def test_option_errors_are_one_line(cli, run_dir: Path, tmp_path: Path, args, expected: str) -> None:
    mr = save_volume(tmp_path / "in" / "scan.nii.gz", head((20, 22, 6), "mr"))
    values = {"mr": mr, "run": run_dir, "tmp": tmp_path}
    result = cli(*(arg.format(**values) for arg in args))
    assert expected in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written


# ------------------------------------------------------------------------------------ each verb


def test_convert_a_file_prints_the_output_and_keeps_the_geometry(cli, run_dir: Path, tmp_path: Path) -> None:
    affine = np.array([[0.0, -1.1, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, -2.5, 20.0], [0, 0, 0, 1]])
    source = save_volume(tmp_path / "case7.nii.gz", head((21, 23, 5), "mr"), affine)
    result = cli("convert", source, "-m", run_dir)
    default = tmp_path / "case7_synthct.nii.gz"  # beside the input, named after the case and modality
    assert result.code == 0, result.err
    assert result.out.strip() == str(default)
    written = nib.load(default)
    assert written.shape == (21, 23, 5) and written.get_data_dtype() == np.int16
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    result = cli("convert", source, "-m", run_dir, "--to", "mr", "-o", tmp_path / "back.nrrd")
    assert result.code == 0, result.err
    back = read_volume(tmp_path / "back.nrrd")
    assert back.array.dtype == np.float32 and back.array.shape == read_volume(source).array.shape


def test_convert_a_folder_keeps_names_and_refuses_a_file_as_output(
    cli, run_dir: Path, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        save_volume(tmp_path / "in" / f"{name}.nii.gz", head((20, 22, 4), "mr"))
    (tmp_path / "in" / "README.txt").write_text("ignored")
    result = cli("convert", tmp_path / "in", "-m", run_dir, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert result.err.count("ignored 1 non-image file") == 1  # one search, one warning
    (tmp_path / "in" / "README.txt").unlink()
    (tmp_path / "file.nii.gz").write_text("x")
    line = one_error_line(cli("convert", tmp_path / "in", "-m", run_dir, "-o", tmp_path / "file.nii.gz"))
    assert "is a file, but the input is a folder" in line


def test_info_prints_a_table_and_json(cli, run_dir: Path) -> None:
    result = cli("info", run_dir, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["direction"] == "mr -> ct" and summary["step"] == 1
    assert summary["networks"]["generator"]["ngf"] == 8 and summary["checkpoints"] == ["last.pt"]
    result = cli("info", run_dir / "checkpoints" / "last.pt")
    assert result.code == 0, result.err
    assert "mr -> ct" in result.out and "ngf 8" in result.out


def test_a_damaged_best_checkpoint_is_named_by_info_and_convert_points_to_last(
    cli, run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    last = run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "best.pt").write_bytes(last.read_bytes()[:1000])  # cut off, as by a bad disk
    result = cli("info", run, "--json")
    assert result.code == 0, result.err  # the run is still described, from last.pt
    summary = json.loads(result.out)
    assert summary["checkpoint"] == str(last) and summary["step"] == 1
    assert summary["best_error"].startswith(
        f"{run / 'checkpoints' / 'best.pt'}: corrupted or truncated checkpoint"
    )
    assert "This is an internal" not in summary["best_error"]  # torch's advice to its own developers
    result = cli("info", run)
    assert result.code == 0, result.err
    assert "best.pt cannot be loaded" in result.out

    mr = save_volume(tmp_path / "mr.nii.gz", head((24, 24, 8), "mr", 1))
    line = one_error_line(cli("convert", mr, "-m", run, "-o", tmp_path / "out.nii.gz"))
    assert "corrupted or truncated checkpoint" in line and line.endswith(f"give -m {last}")
    # Named by the user, best.pt gets no advice about another file.
    line = one_error_line(
        cli("convert", mr, "-m", run / "checkpoints" / "best.pt", "-o", tmp_path / "o.nii.gz")
    )
    assert "give -m" not in line
    assert cli("convert", mr, "-m", last, "-o", tmp_path / "out.nii.gz").code == 0


def test_evaluate_prints_a_table_and_writes_json_and_csv(cli, tmp_path: Path) -> None:
    reference = save_volume(tmp_path / "ref" / "p1.nii.gz", head((24, 24, 8), "ct", 1))
    prediction = save_volume(tmp_path / "pred" / "p1.nii.gz", head((24, 24, 8), "ct", 2))
    result = cli("evaluate", "--pred", prediction, "--ref", reference, "--out", tmp_path / "r" / "eval.json")
    assert result.code == 0, result.err
    assert "MAE" in result.out and "p1" in result.out
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert report and (tmp_path / "r" / "eval.csv").is_file()


@pytest.mark.parametrize("name", ["scan.mha", "scan.nrrd"])
def test_convert_and_evaluate_refuse_corrupted_compressed_itk_files(
    cli, run_dir: Path, tmp_path: Path, name: str
) -> None:
    path = save_volume(tmp_path / "in" / name, head((24, 24, 6), "mr"))
    data = bytearray(path.read_bytes())
    if name.endswith(".mha"):  # 50 bytes of the zlib stream inverted: MetaIO decodes wrong voxels
        middle = len(data) * 3 // 4
        data[middle : middle + 50] = bytes(b ^ 0xFF for b in data[middle : middle + 50])
    else:  # the gzip length field, which NrrdIO never checks
        data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    for args in (
        ("convert", path, "-m", run_dir, "-o", tmp_path / "out.nii.gz"),
        ("evaluate", "--pred", path, "--ref", path),
    ):
        line = one_error_line(cli(*args))
        assert line.startswith(f"error: {path}: is corrupted"), line
    assert not (tmp_path / "out.nii.gz").exists()


def test_convert_refuses_an_output_whose_data_file_is_the_inputs(cli, run_dir: Path, tmp_path: Path) -> None:
    """``a.mhd -o a.MHD``: the output's ``a.zraw`` is the input's voxels, even with --overwrite."""
    source = save_volume(tmp_path / "a.mhd", head((24, 24, 6), "mr"))  # and a.zraw
    voxels = (tmp_path / "a.zraw").read_bytes()
    for output in ("a.MHD", "a.mhd", "A.Mhd"):
        line = one_error_line(cli("convert", source, "-m", run_dir, "-o", tmp_path / output, "--overwrite"))
        assert "output would replace its own input file" in line, line
    assert (tmp_path / "a.zraw").read_bytes() == voxels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.zraw"]


def test_threads_sets_the_torch_cpu_threads_and_is_validated(cli, run_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        result = cli("--threads", "1", "info", run_dir)
        assert result.code == 0, result.err
        assert torch.get_num_threads() == 1 and parallel.worker_threads() == 1
    finally:
        torch.set_num_threads(before)
        parallel.set_worker_threads(None)
    assert "--threads must be >= 1" in one_error_line(cli("--threads", "0", "info", run_dir))


def test_convert_gpus_is_validated_before_any_work(cli, tmp_path: Path) -> None:
    assert "--gpus must be >= 1" in one_error_line(
        cli("convert", tmp_path, "-o", tmp_path / "o", "--gpus", "0")
    )
    if not torch.cuda.is_available():
        line = one_error_line(cli("convert", tmp_path, "-o", tmp_path / "o", "--gpus", "2"))
        assert "more GPUs than this machine has" in line and "-m medcyclegan convert --device cpu" in line


@pytest.mark.parametrize(
    ("verb", "default"),
    [
        ((), "[default: auto]"),
        (("train",), "[default: runs/<date-time>]"),
        (("convert",), "[default: newest under ./runs]"),
        (("convert",), "[default: <case>_synth<to>.nii.gz]"),
        (("augment",), "[default: SynthCT or SynthMR]"),
    ],
)
def test_help_texts_show_their_defaults(cli, verb: tuple[str, ...], default: str) -> None:
    # Rich reads an unescaped "[default: ...]" as markup and drops it: the help said "Run folder ."
    result = cli(*verb, "--help")
    assert result.code == 0 and default in " ".join(result.out.replace("│", " ").split())

"""The ``medcyclegan`` command: a thin layer over the library.

Each verb parses its options, calls one library function and prints the result. Errors in user input
arrive as :class:`~medcyclegan.errors.MedCycleGANError` and are printed as one line on stderr with
exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from medcyclegan import __version__
from medcyclegan.config import BACKENDS, DEFAULT_BACKEND, GENERATORS, MODEL_KINDS, check_planes
from medcyclegan.errors import MedCycleGANError
from medcyclegan.runtime import DEVICE_HELP
from medcyclegan.runtime.threads import THREADS_HELP, apply_auto, apply_fixed, decide_auto, parse_threads

app = typer.Typer(
    name="medcyclegan",
    help="Unpaired medical image translation (MRI <-> CT) with CycleGAN: volumes in, exact geometry and HU out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

logger = logging.getLogger("medcyclegan")

# Test-time averaging, as convert and augment both offer it.
FLIP_AVERAGE_HELP = (
    "Test-time flip averaging: average each slice's translation with the mirrored translation "
    "of its left-right mirror image (twice the generator time)."
)
PLANES_HELP = (
    "Slice planes to translate along and average, comma-separated: axial, coronal, sagittal "
    "(one generator pass each; coronal and sagittal slices are taken from the volume resampled "
    "to isotropic voxels, and need the whole volume in memory)."
)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medcyclegan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Show only warnings and errors."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP, show_default=False, metavar="auto|N"),
) -> None:
    """medcyclegan: train, convert, evaluate; volumes keep their geometry, CT stays in HU."""
    _setup_logging(verbose, quiet)
    # Before any verb imports torch: auto sets OMP_NUM_THREADS and the OpenMP wait variables, which
    # are read once, when torch loads libgomp (medcyclegan.runtime.threads).
    fixed = parse_threads(threads)
    choice = apply_fixed(fixed) if fixed is not None else apply_auto(decide_auto())
    logger.debug("%s", choice.describe())


def _overrides(pairs: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    from medcyclegan.config import parse_override

    overrides = {k: v for k, v in pairs.items() if v is not None}
    for text in sets or []:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _relaunch_with_torchrun(gpus: int) -> None:
    """Runs this very command on ``gpus`` processes through torchrun and exits with its status."""
    from medcyclegan.runtime.distributed import launch_with_torchrun, strip_option

    if gpus < 1:
        raise MedCycleGANError(f"--gpus must be >= 1; got {gpus}")
    raise typer.Exit(launch_with_torchrun(strip_option(sys.argv[1:], "--gpus"), gpus))


@app.command()
def train(
    src: Path | None = typer.Option(
        None, "--src", help="Folder (or file) of source-domain volumes (domain A)."
    ),
    tgt: Path | None = typer.Option(
        None, "--tgt", help="Folder (or file) of target-domain volumes (domain B)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder \\[default: runs/<date-time>]."),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML config file or built-in name (default, quick-cpu, brain-mr-ct, pelvis-mr-ct).",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs at the constant learning rate (optim.n_epochs)."
    ),
    epochs_decay: int | None = typer.Option(
        None, "--epochs-decay", help="Epochs of linear learning-rate decay (optim.n_epochs_decay)."
    ),
    max_steps: int | None = typer.Option(
        None,
        "--max-steps",
        help="Stop at this total step count (counted over resumes); at most the schedule's steps.",
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="Step-based schedule of N steps (optim.n_steps) instead of --epochs/--epochs-decay: "
        "constant learning rate, then linear decay over the last half (optim.decay_fraction).",
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Training slice size in pixels (pad/crop)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per step."),
    ngf: int | None = typer.Option(None, "--ngf", help="Generator filters in the first layer."),
    ndf: int | None = typer.Option(None, "--ndf", help="Discriminator filters in the first layer."),
    n_blocks: int | None = typer.Option(None, "--n-blocks", help="Residual blocks in the generator."),
    model: str | None = typer.Option(
        None, "--model", "-m", help=f"Translation model (model.kind): {', '.join(MODEL_KINDS)}."
    ),
    generator: str | None = typer.Option(
        None,
        "--generator",
        help=f"Generator (model.generator): {', '.join(GENERATORS)} \\[default: the model's: resnet; pix2pix: unet].",
    ),
    upsample: str | None = typer.Option(
        None, "--upsample", help="transpose (reference) or resize (no checkerboard)."
    ),
    lambda_cycle: float | None = typer.Option(None, "--lambda-cycle", help="Cycle L1 weight (default 10)."),
    lambda_identity: float | None = typer.Option(
        None,
        "--lambda-identity",
        help="Identity weight as a fraction of lambda-cycle (default 0.5; 0 = off).",
    ),
    mask_loss: bool | None = typer.Option(
        None, "--mask-loss/--no-mask-loss", help="Cycle and identity L1 as masked means inside the body."
    ),
    lambda_mask: float | None = typer.Option(
        None, "--lambda-mask", help="Background/outline preservation weight (0 = off)."
    ),
    src_modality: str | None = typer.Option(None, "--src-modality", help="mr or ct (default mr)."),
    tgt_modality: str | None = typer.Option(None, "--tgt-modality", help="mr or ct (default ct)."),
    spacing: float | None = typer.Option(
        None, "--spacing", help="In-plane spacing in mm to resample slices to."
    ),
    context_slices: int | None = typer.Option(
        None, "--context-slices", help="2.5D: neighbouring slices each side."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    num_workers: int | None = typer.Option(None, "--num-workers", help="DataLoader worker processes."),
    val_src: Path | None = typer.Option(None, "--val-src", help="Validation volumes of domain A."),
    val_tgt: Path | None = typer.Option(
        None, "--val-tgt", help="Validation volumes of domain B (paired by name: translation metrics)."
    ),
    src_masks: Path | None = typer.Option(
        None, "--src-masks", help="Body masks for --src, paired by case name."
    ),
    tgt_masks: Path | None = typer.Option(
        None, "--tgt-masks", help="Body masks for --tgt, paired by case name."
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Any config value: section.key=value (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out exactly where it stopped."
    ),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Resume the run in --out if it has a checkpoint, else start it (one command line for "
        "jobs that may be requeued).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start afresh in a run folder that already holds a run."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        help="Train on N GPUs of this machine with DistributedDataParallel (relaunches via torchrun).",
    ),
    compile_: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the networks (train.compile; slow start, faster steps on GPU).",
    ),
    check_pairs: bool = typer.Option(
        False,
        "--check-pairs",
        help="Paired models (pix2pix): check that --src and --tgt (and --val-src/--val-tgt) hold the same "
        "case names, each pair on one grid, then exit without training.",
    ),
) -> None:
    """Train a model on two folders of volumes (NIfTI, NRRD/MHA, DICOM series): unpaired (CycleGAN), or
    registered pairs matched by case name (pix2pix)."""
    if gpus is not None:
        _relaunch_with_torchrun(gpus)
    import datetime

    from medcyclegan.config import load_config, resolve_config_path
    from medcyclegan.train.api import auto_resume as auto_resume_plan
    from medcyclegan.train.api import check_pairs as check_pair_folders
    from medcyclegan.train.api import new_run_dir, resume_config, train_from_folders

    overrides = _overrides(
        {
            "optim.n_epochs": epochs,
            "optim.n_epochs_decay": epochs_decay,
            "optim.n_steps": steps,
            "train.max_steps": max_steps,
            "data.image_size": image_size,
            "optim.batch_size": batch_size,
            "model.kind": model,
            "model.ngf": ngf,
            "model.ndf": ndf,
            "model.n_blocks": n_blocks,
            "model.generator": generator,
            "model.upsample": upsample,
            "loss.lambda_cycle": lambda_cycle,
            "loss.lambda_identity": lambda_identity,
            "loss.mask_loss": mask_loss,
            "loss.lambda_mask": lambda_mask,
            "data.src_modality": src_modality,
            "data.tgt_modality": tgt_modality,
            "data.spacing": spacing,
            "data.context_slices": context_slices,
            "train.seed": seed,
            "train.device": device,
            "data.num_workers": num_workers,
            "train.compile": compile_,
        },
        set_,
    )
    if steps is not None and (epochs is not None or epochs_decay is not None):
        raise MedCycleGANError("--steps replaces --epochs and --epochs-decay; give one or the other")
    for flag, given in (("--resume", resume), ("--auto-resume", auto_resume)):
        if given and out is None:
            raise MedCycleGANError(f"{flag} needs --out RUN_DIR (the run to continue)")
    if resume and overwrite:
        # Resuming would silently ignore the request to start afresh (or the reverse).
        raise MedCycleGANError(
            "--resume cannot be combined with --overwrite: --resume continues the run in --out, "
            "--overwrite starts it afresh; give one"
        )
    if auto_resume and overwrite:
        raise MedCycleGANError(
            "--auto-resume cannot be combined with --overwrite (a requeued job would start afresh)"
        )
    if check_pairs:
        if resume or auto_resume:
            raise MedCycleGANError(
                "--check-pairs checks folders before a run: give --src and --tgt, not --resume"
            )
        if src is None or tgt is None:
            raise MedCycleGANError("--check-pairs needs --src and --tgt (the folders of the pairs)")
        cfg = load_config(resolve_config_path(config) if config else None, overrides)
        paired = check_pair_folders(cfg, src=src, tgt=tgt, val_src=val_src, val_tgt=val_tgt)
        n_val = len(paired["val_src"] or [])
        typer.echo(
            f"{len(paired['src'] or [])} training pair(s)"
            + (f" and {n_val} validation pair(s)" if val_src is not None else "")
            + f" matched by case name, each on one grid (headers read; the voxels are read and "
            f"checked when {cfg.model.kind} training starts)"
        )
        return
    if auto_resume and out is not None and not resume:
        resume = auto_resume_plan(out)
        if not resume:
            logger.info("--auto-resume: no checkpoint in %s yet, starting the run", out)
    config_path = resolve_config_path(config) if config else None
    # On resume the stored config is used; a --config or options equal to it are accepted (requeued jobs).
    cfg = resume_config(out, overrides, config_path) if resume else load_config(config_path, overrides)
    run_dir = out or new_run_dir(Path("runs"), datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    result = train_from_folders(
        cfg,
        run_dir,
        src=src,
        tgt=tgt,
        val_src=val_src,
        val_tgt=val_tgt,
        src_masks=src_masks,
        tgt_masks=tgt_masks,
        resume=resume,
        overwrite=overwrite,
        show_progress=progress and sys.stderr.isatty(),
    )
    best = f"; best {result.best_metric} = {result.best_value:.4f}" if result.best_value is not None else ""
    typer.echo(
        f"trained to step {result.step} (epoch {result.epoch}); checkpoint {result.last_checkpoint}{best}"
    )


@app.command()
def convert(
    input: Path = typer.Argument(..., help="A volume file, a DICOM series folder, or a folder of volumes."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output file (or folder for a folder input; the series folder with --output-format dicom) "
        "\\[default: <case>_synth<to>.nii.gz].",
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Run folder, checkpoint, or exported .onnx model (medcyclegan export) \\[default: newest under ./runs].",
    ),
    to: str | None = typer.Option(
        None, "--to", help="Target modality ct or mr \\[default: the training target]."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Slices per forward pass."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help=f"Engine that runs the model: {', '.join(BACKENDS)} (onnxruntime exports a checkpoint in "
        f"memory first; auto takes onnxruntime on the CPU) \\[default: {DEFAULT_BACKEND}; an .onnx model: onnxruntime].",
    ),
    mask_background: bool = typer.Option(
        False, "--mask-background", help="Set voxels outside the body to air."
    ),
    save_attention: bool = typer.Option(
        False,
        "--save-attention",
        help="Also write the attention mask (resnet-attention models) as <name>_attention.",
    ),
    flip_average: bool = typer.Option(False, "--flip-average", help=FLIP_AVERAGE_HELP),
    planes: str = typer.Option("axial", "--planes", help=PLANES_HELP),
    samples: int = typer.Option(
        1,
        "--samples",
        help="Models with styles (munit): translate with K styles drawn from N(0, I) and write their "
        "mean, plus their voxel-wise standard deviation (an uncertainty map, HU for CT) as "
        "<name>_std beside it (K generator passes). 1: one translation at the fixed style.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the styles of --samples \\[default: 0]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        help="Convert a folder on N GPUs of this machine, one process each (relaunches via torchrun).",
    ),
    output_format: str = typer.Option(
        "volume",
        "--output-format",
        help="volume: one volume file per input, its format from the -o suffix (.nii.gz, .nii, .nrrd, "
        ".nhdr, .mha, .mhd; a DICOM series becomes <case>.nii.gz). dicom: a CT Image Storage series "
        "(synthetic CT only), one int16 HU file per slice, in a folder: -o is that folder for one input "
        "\\[default: <case>_synthct], one folder per case below -o for a folder input; it keeps the patient, "
        "study and FrameOfReferenceUID of a DICOM source series. An existing non-empty folder needs "
        "--overwrite and is then replaced as a whole (only a folder of DICOM files). --save-attention "
        "and --samples maps are written as NIfTI beside the folder (<folder>_attention.nii.gz, "
        "<folder>_std.nii.gz). volume stays the default for every input, DICOM series included, so "
        "that -o DIR keeps meaning DIR/<case>.nii.gz.",
    ),
    dicom_patient_name: str | None = typer.Option(
        None,
        "--dicom-patient-name",
        help="--output-format dicom of a non-DICOM input: PatientName (FAMILY^GIVEN) \\[default: the case "
        "name]. A DICOM source keeps its own patient and study.",
    ),
    dicom_patient_id: str | None = typer.Option(
        None,
        "--dicom-patient-id",
        help="--output-format dicom of a non-DICOM input: PatientID \\[default: the case name].",
    ),
    dicom_study_uid: str | None = typer.Option(
        None,
        "--dicom-study-uid",
        help="--output-format dicom of a non-DICOM input: the StudyInstanceUID to join \\[default: a new "
        "study]. Each such series gets a new FrameOfReferenceUID.",
    ),
) -> None:
    """Translate volumes with a trained model; outputs keep the input's exact geometry (CT as int16 HU)."""
    if gpus is not None:
        _relaunch_with_torchrun(gpus)
    from medcyclegan.convert import check_output_format, convert_paths, load_model, std_output_path
    from medcyclegan.io.dicom_writer import DicomIdentity

    if to is not None and to not in ("ct", "mr"):
        raise MedCycleGANError(f"--to must be ct or mr; got {to!r}")
    if batch_size < 1:
        raise MedCycleGANError(f"--batch-size must be >= 1; got {batch_size}")
    chosen_planes = check_planes(planes, "--planes")
    if samples < 1:
        raise MedCycleGANError(f"--samples must be >= 1; got {samples}")
    if seed is not None and samples == 1:
        raise MedCycleGANError("--seed draws the styles of --samples: give --samples K (K >= 2) too")
    if seed is not None and not 0 <= seed < 2**63:
        raise MedCycleGANError(f"--seed must be in [0, 2**63); got {seed}")
    check_output_format(output_format, to)  # before the checkpoint is loaded
    identity = DicomIdentity(dicom_patient_name, dicom_patient_id, dicom_study_uid).check()
    if identity.given and output_format != "dicom":
        raise MedCycleGANError(
            "--dicom-patient-name, --dicom-patient-id and --dicom-study-uid need --output-format dicom"
        )
    translation = load_model(model, to=to, device=device, backend=backend)
    written = convert_paths(
        translation,
        input,
        output,
        batch_size=batch_size,
        mask_background=mask_background,
        save_attention=save_attention,
        overwrite=overwrite,
        flip_average=flip_average,
        planes=chosen_planes,
        samples=samples,
        seed=0 if seed is None else seed,
        output_format=output_format,
        dicom_identity=identity,
    )
    for path in written:
        # With --samples K the standard deviation lies beside each mean: name both.
        typer.echo(str(path) if samples == 1 else f"{path} (std: {std_output_path(path)})")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Run folder (best.pt, else last.pt) or checkpoint."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    to: str | None = typer.Option(
        None,
        "--to",
        help="Modality the exported translator produces, ct or mr \\[default: the training target].",
    ),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset, 18 to 23 \\[default: 18]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export one direction's translator as a self-contained ONNX model (dynamic batch and slice size) that
    convert --model X.onnx runs alone: its metadata holds the run's config and normalisation."""
    from medcyclegan.export import DEFAULT_OPSET, export_model

    if to is not None and to not in ("ct", "mr"):
        raise MedCycleGANError(f"--to must be ct or mr; got {to!r}")
    written, info = export_model(
        model, output, to=to, overwrite=overwrite, opset=DEFAULT_OPSET if opset is None else opset
    )
    styles = f", style input of {info.style_dim}" if info.style_dim is not None else ""
    attention = ", attention output" if info.attention else ""
    typer.echo(
        f"{written}: {info.cfg.model.kind} translator {info.source_modality} -> {info.target_modality} "
        f"({info.in_channels} channel(s), H and W multiples of {info.stride_multiple}{styles}{attention})"
    )


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Predicted (synthetic) volume or folder."),
    ref: Path = typer.Option(..., "--ref", help="Reference volume or folder (paired by case name)."),
    mask: Path | None = typer.Option(
        None, "--mask", help="Body mask file or folder \\[default: computed from --ref]."
    ),
    standard: str = typer.Option("synthrad2023", "--standard", help="synthrad2023 or synthrad2025."),
    tissue_edges: str | None = typer.Option(
        None,
        "--tissue-edges",
        help="LOW,HIGH reference HU between air/lung, soft tissue and bone for the per-tissue MAE "
        "\\[default: -400,250].",
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the report as JSON (and CSV beside it)."),
    figures: Path | None = typer.Option(
        None,
        "--figures",
        help="Folder for one PNG panel per case (<case>.png): MR | synthetic CT | CT | error, "
        "axial/coronal/sagittal, soft-tissue and bone windows.",
    ),
    source: Path | None = typer.Option(
        None,
        "--source",
        help="The MR volume or folder (paired by case name) the predictions were made from, "
        "shown in the panels (with --figures).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report or panel."),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="Label map (integers, 0 = background) of the reference, or a folder of them paired by case "
        "name: adds the MAE over each label's voxels.",
    ),
    label_names: Path | None = typer.Option(
        None,
        "--label-names",
        help="nnU-Net v2 or MSD dataset.json naming the label values (with --labels) \\[default: label_<value>].",
    ),
) -> None:
    """Score synthetic CT against reference CT: MAE, PSNR, SSIM (SynthRAD definitions, masked), MAE per tissue
    and per label, body outline Dice."""
    from rich.console import Console

    from medcyclegan.evaluate import check_report_paths
    from medcyclegan.evaluate import evaluate as run_evaluation
    from medcyclegan.metrics import TISSUE_EDGES_HU, parse_tissue_edges

    edges = TISSUE_EDGES_HU if tissue_edges is None else parse_tissue_edges(tissue_edges)
    if source is not None and figures is None:
        raise MedCycleGANError("--source is drawn in the panels only: give --figures DIR too")
    if label_names is not None and labels is None:
        raise MedCycleGANError("--label-names names the values of --labels: give --labels too")
    if out is not None:
        # Before any metric is computed: a report that cannot be written fails at once.
        check_report_paths(out, overwrite=overwrite, inputs=(pred, ref, mask, labels, label_names))
    report = run_evaluation(
        pred,
        ref,
        mask,
        standard=standard,
        tissue_edges=edges,
        figures=figures,
        source=source,
        overwrite=overwrite,
        labels=labels,
        label_names=label_names,
    )
    Console().print(report.to_rich_table())
    label_table = report.to_label_table()
    if label_table is not None:
        Console().print(label_table)
    if out is not None:
        report.write(out, overwrite=overwrite)
        typer.echo(f"report written to {out} and {out.with_suffix('.csv')}")
    if figures is not None:
        typer.echo(f"{len(report.figures)} panel(s) written to {figures}")


@app.command()
def info(
    path: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Summarise a run folder, checkpoint or exported .onnx model: networks, modalities, normalisation, progress."""
    from medcyclegan.checkpoint import is_onnx_path

    if is_onnx_path(path):
        _info_onnx(path, as_json)
        return
    from medcyclegan.train.info import describe

    summary = describe(path)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"medcyclegan run: {summary.get('run_dir', summary['checkpoint'])}", show_header=False
    )
    nets = summary["networks"]
    # One row per network entry the model describes (medcyclegan.models.base.describe_networks).
    network_rows = [
        (name, entry["summary"])
        for name, entry in nets.items()
        if isinstance(entry, dict) and "summary" in entry
    ]
    rows = [
        ("model", str(summary["model"])),
        ("direction", summary["direction"]),
        (
            "progress",
            f"epoch {summary['epoch']}, step {summary['step']} of {summary['total_steps']}"
            if summary["total_steps"] is not None
            else f"epoch {summary['epoch']} of {summary['total_epochs']}, step {summary['step']}",
        ),
        *network_rows,
        ("input channels", str(nets["in_channels"])),
        (
            "slices",
            f"{summary['data']['image_size']} px, spacing {summary['data']['spacing_mm'] or 'native'} mm",
        ),
        ("normalisation", json.dumps(summary["normalisation"])),
        (
            "best",
            f"[red]best.pt cannot be loaded[/red]: {escape(summary['best_error'])}"
            if summary.get("best_error")
            else _best_text(summary.get("best")),
        ),
        (
            "training time",
            "not recorded" if summary.get("train_seconds") is None else f"{summary['train_seconds']:.0f} s",
        ),
        ("checkpoints", ", ".join(summary.get("checkpoints", [summary["checkpoint"]]))),
        ("version", str(summary["medcyclegan_version"])),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _info_onnx(path: Path, as_json: bool) -> None:
    """``info`` of an exported model: its metadata and graph interface."""
    from medcyclegan.onnx_model import onnx_summary

    summary = onnx_summary(path)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"medcyclegan ONNX model: {path}", show_header=False)
    interface = ", ".join(f"{name} {dims}" for name, dims in summary["interface"].items())
    rows = [
        ("model", f"{summary['model']} ({summary['generator']})"),
        ("direction", summary["direction"]),
        ("interface", interface),
        ("input channels", str(summary["in_channels"])),
        (
            "slices",
            f"H and W padded to multiples of {summary['stride_multiple']}, at least {summary['min_input_size']} px",
        ),
        ("spacing", "native" if summary["spacing_mm"] is None else f"{summary['spacing_mm']:g} mm"),
        ("styles", "none" if summary["style_dim"] is None else f"style input of {summary['style_dim']}"),
        ("normalisation", json.dumps(summary["normalisation"])),
        ("opset", str(summary["opset"])),
        ("size", f"{summary['bytes']:,} bytes"),
        ("from", f"{summary['checkpoint']} (sha256 {summary['checkpoint_sha256'][:16]}...)"),
        ("version", str(summary["medcyclegan_version"])),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _best_text(best: dict[str, Any] | None) -> str:
    """``info``'s best row, e.g. ``val/mae = 118.7 (min) at epoch 12, step 708``."""
    if not best or best.get("value") is None:
        return "none (no validation yet)"
    where = f"epoch {best['epoch'] + 1}" if best.get("epoch") is not None else "epoch ?"
    if best.get("step") is not None:
        where += f", step {best['step']}"
    return f"{best['metric']} = {best['value']:.4g} ({best['mode']}) at {where}"


@app.command()
def augment(
    images: Path | None = typer.Option(
        None, "--images", help="Folder of source images (e.g. MR) with labels."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Folder of label maps, paired with --images by case name."
    ),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Run folder or checkpoint \\[default: newest under ./runs]."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Parent folder of the dataset (e.g. $nnUNet_raw)."
    ),
    fmt: str = typer.Option("nnunetv2", "--format", help="nnunetv2 or msd."),
    to: str | None = typer.Option(
        None, "--to", help="Target modality ct or mr \\[default: the training target]."
    ),
    include_originals: bool = typer.Option(
        False, "--include-originals", help="Also add the original images (channel declared zscore)."
    ),
    dataset_id: int | None = typer.Option(
        None, "--dataset-id", help="nnU-Net dataset id (1-999) or MSD task number."
    ),
    name: str | None = typer.Option(None, "--name", help="Dataset name \\[default: SynthCT or SynthMR]."),
    labels_json: Path | None = typer.Option(
        None,
        "--labels-json",
        help='Label names: {"background": 0, "liver": 1}, or an nnU-Net v2 / MSD dataset.json with "labels".',
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Slices per forward pass."),
    flip_average: bool = typer.Option(False, "--flip-average", help=FLIP_AVERAGE_HELP),
    planes: str = typer.Option("axial", "--planes", help=PLANES_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite cases that already exist."),
    check: Path | None = typer.Option(
        None, "--check", help="Only check an existing nnU-Net v2 or MSD dataset folder."
    ),
) -> None:
    """Synthetic volumes as a ready-to-train segmentation dataset (nnU-Net v2 or MSD), labels reused."""
    from medcyclegan.augment import augment_dataset, check_dataset

    if check is not None:
        if any(v is not None for v in (images, labels, out, dataset_id, name, labels_json, model)):
            raise MedCycleGANError("--check takes only the dataset folder; drop the build options")
        report = check_dataset(check)
        for problem in report.problems:
            typer.echo(problem)
        typer.echo(report.summary())
        report.raise_if_problems()
        return
    missing = [flag for flag, v in (("--images", images), ("--labels", labels), ("--out", out)) if v is None]
    if missing:
        raise MedCycleGANError(f"{', '.join(missing)} required (or use --check DIR)")
    if dataset_id is None:
        raise MedCycleGANError("--dataset-id is required (nnU-Net dataset id 1-999, or MSD task number)")
    result = augment_dataset(
        images,
        labels,
        model,
        out,
        fmt=fmt,
        to=to,
        include_originals=include_originals,
        dataset_id=dataset_id,
        name=name,
        labels_json=labels_json,
        overwrite=overwrite,
        batch_size=batch_size,
        device=device,
        flip_average=flip_average,
        planes=check_planes(planes, "--planes"),
    )
    typer.echo(
        f"dataset written to {result.dataset_dir} ({len(result.written)} written, {len(result.skipped)} kept)"
    )
    typer.echo(result.check.summary())


@app.command("sample-data")
def sample_data(
    out: Path = typer.Argument(..., help="Folder to write the phantom dataset into."),
    n_train: int = typer.Option(6, "--n-train", help="Training subjects per domain (disjoint subjects)."),
    n_test: int = typer.Option(3, "--n-test", help="Held-out subjects with paired MR and CT."),
    n_val: int = typer.Option(
        0, "--n-val", help="Validation subjects with paired MR and CT in val/ (for --val-src/--val-tgt)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the anatomy."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
) -> None:
    """Write the built-in head phantom: unpaired MR/CT training data and paired test data with masks."""
    from medcyclegan.sample_data import write_sample_dataset

    dataset = write_sample_dataset(
        out,
        n_train_mr=n_train,
        n_train_ct=n_train,
        n_test=n_test,
        n_val=n_val,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"sample dataset written to {out}")
    del dataset


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo-out"), "--out", "-o", help="Folder for the data, the run and the results."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Cap the training steps (for a quick look)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Reuse a non-empty output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Phantom data -> train (quick-cpu) -> convert held-out MR -> evaluate against CT and two baselines."""
    from rich.console import Console

    from medcyclegan.demo import run_demo

    result = run_demo(
        out, max_steps=max_steps, overwrite=overwrite, show_progress=progress and sys.stderr.isatty()
    )
    Console().print(result.table())
    typer.echo(result.summary())


def main() -> None:
    """Entry point: runs the app and turns user errors into one clean line."""
    from medcyclegan.errors import TrainingInterrupted

    try:
        # Not standalone: typer would print a usage error as a framed box over five lines; it comes
        # here instead and gets one line. A command's exit status (typer.Exit) is returned.
        status = app(prog_name="medcyclegan", standalone_mode=False)
    except MedCycleGANError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except TrainingInterrupted as exc:
        typer.echo(str(exc), err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # the bare command: its help, as before
            exc.show()  # type: ignore[attr-defined]
        else:
            typer.echo(f"error: {_usage_error_line(exc)}", err=True)
        sys.exit(int(exc.exit_code))  # type: ignore[attr-defined]
    sys.exit(status if isinstance(status, int) else 0)


def _is_usage_error(exc: Exception) -> bool:
    """Click's exceptions (usage errors, bad parameters), vendored by newer typer, imported by older."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(
        exc, "format_message"
    )


def _usage_error_line(exc: Exception) -> str:
    """``medcyclegan convert: Missing argument 'input'. (see 'medcyclegan convert -h')``."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{ctx.command_path}: {message} (see '{ctx.command_path} -h')"


if __name__ == "__main__":
    main()

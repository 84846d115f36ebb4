"""Generator speed on the CPU: torch eager against onnxruntime (and OpenVINO when installed), one run.

For each model (``quick``: configs/quick-cpu.yaml's generator, ngf 16, 3 blocks, resize upsampling;
``reference``: the reference CycleGAN's ResNet, ngf 64, 9 blocks) the translator is built as
conversion builds it (random weights: speed does not depend on them), exported as
``medcyclegan export`` does (:func:`medcyclegan.export.export_onnx`, which also checks its parity),
and a batch of ``--batch-size`` slices of ``--size`` x ``--size`` pixels is translated
``--repeats`` times after one warm-up pass by each engine: torch eager (``torch.no_grad``) and the
onnxruntime session wrapper conversion uses (:class:`medcyclegan.onnx_model.OnnxTranslator`, its
tensor copies included), both on ``--threads`` threads. Printed per model: the median seconds per
batch, slices/s, the ratio onnxruntime / torch, the export time, and the parity the run saw (max
|onnxruntime - torch| in the network's units and in HU of the default CT window).

OpenVINO is timed only when ``openvino`` is importable (it is not a dependency); else it is
reported as skipped. Its CPU plugin runs in float32 here (``--openvino-precision f32``, the
default): on a CPU with bf16 units (AVX-512 BF16, AMX) it otherwise lowers to bf16 on its own,
which was 4x faster on the development machine but 77-141 HU off torch (``bf16`` shows it).

Usage (about 3 minutes on 2 cores with the defaults: the reference generator at 256 px runs at
about 1 slice/s):
    python benchmarks/bench_onnx.py                                   # quick + reference, 256 px, batch 16, 2 threads
    python benchmarks/bench_onnx.py --models quick --size 64 --batch-size 2 --repeats 1   # a smoke run
    python benchmarks/bench_onnx.py --json onnx.json                  # also the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS: dict[str, dict[str, Any]] = {
    "quick": {"config": "quick-cpu", "overrides": {}},
    "reference": {"config": None, "overrides": {"model.ngf": 64, "model.n_blocks": 9}},
}


def build(name: str) -> Any:
    """The model's ConversionModel on the CPU (random weights, the default CT window)."""
    from medcyclegan.config import load_config, resolve_config_path
    from medcyclegan.convert import ConversionModel
    from medcyclegan.models import model_class

    spec = MODELS[name]
    path = resolve_config_path(spec["config"]) if spec["config"] else None
    cfg = load_config(path, spec["overrides"])
    torch.manual_seed(0)
    generator = model_class(cfg.model.kind).build_translator(cfg, "AB").eval()
    return ConversionModel(generator, cfg, "mr", "ct", Path(f"{name}.pt"), torch.device("cpu"))


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds of ``repeats`` calls after one warm-up call, the last result)."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def openvino_runner(
    data: bytes, threads: int, precision: str = "f32"
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A callable running the ONNX model on OpenVINO's CPU plugin, or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    settings = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(core.read_model(data), "CPU", settings)
    return lambda x: compiled(x)[0]


def bench_model(
    name: str, *, size: int, batch_size: int, repeats: int, threads: int, openvino_precision: str = "f32"
) -> dict[str, Any]:
    from medcyclegan.export import export_onnx
    from medcyclegan.onnx_model import onnx_translator

    model = build(name)
    start = time.perf_counter()
    data, info = export_onnx(model)
    export_s = time.perf_counter() - start
    session = onnx_translator(data, info, f"{name}.onnx", device="cpu", threads=threads)
    x = (
        torch.rand(batch_size, info.in_channels, size, size, generator=torch.Generator().manual_seed(1)) * 2
        - 1
    )
    with torch.no_grad():
        torch_s, expected = timed(lambda: model.generator(x), repeats)
    ort_s, got = timed(lambda: session(x), repeats)
    difference = float((got - expected).abs().max())
    low, high = model.cfg.data.ct_window  # [-1, 1] spans it: one network unit is half its width in HU
    hu_per_unit = (float(high) - float(low)) / 2.0
    rows = {"torch": torch_s, "onnxruntime": ort_s}
    runner = openvino_runner(data, threads, openvino_precision)
    if runner is not None:
        array = x.numpy()
        rows["openvino"], out = timed(lambda: runner(array), repeats)
        difference_ov = float(np.abs(np.asarray(out) - expected.numpy()).max())
    else:
        difference_ov = None
    return {
        "model": name,
        "size": size,
        "batch_size": batch_size,
        "threads": threads,
        "repeats": repeats,
        "export_s": export_s,
        "seconds_per_batch": rows,
        "slices_per_s": {k: batch_size / v for k, v in rows.items()},
        "onnxruntime_over_torch": torch_s / ort_s,
        "max_abs_difference": difference,
        "max_abs_difference_hu": difference * hu_per_unit,
        "openvino_max_abs_difference": difference_ov,
        "openvino": "timed" if runner is not None else "not installed, skipped",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="quick,reference", help="comma-separated: quick, reference [both]"
    )
    parser.add_argument("--size", type=int, default=256, help="slice side in pixels [256]")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per pass [16]")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after one warm-up [3]")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both engines [2]")
    parser.add_argument(
        "--openvino-precision",
        choices=("f32", "bf16"),
        default="f32",
        help="OpenVINO's inference precision [f32]",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    torch.set_num_threads(args.threads)
    results = []
    for name in names:
        r = bench_model(
            name,
            size=args.size,
            batch_size=args.batch_size,
            repeats=args.repeats,
            threads=args.threads,
            openvino_precision=args.openvino_precision,
        )
        results.append(r)
        speeds = ", ".join(f"{k} {v:.2f} slices/s" for k, v in r["slices_per_s"].items())
        print(
            f"{name}: {args.size} x {args.size}, batch {args.batch_size}, {args.threads} threads: {speeds}; "
            f"onnxruntime / torch = {r['onnxruntime_over_torch']:.2f}x; export {r['export_s']:.1f} s; "
            f"max |ort - torch| = {r['max_abs_difference']:.2e} ({r['max_abs_difference_hu']:.3f} HU); "
            f"openvino: {r['openvino']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

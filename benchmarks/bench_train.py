"""Training speed: a reference-style CycleGAN loop versus ``CycleGAN.train_step``, in one run.

(a) ``reference``: the loop of the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix),
    written here from its description: fp32, eager; forward of both cycles; generator update with
    the discriminators frozen (identity, LSGAN, cycle terms, one backward); then the discriminator
    of each domain in turn, each on a real batch and a batch drawn from its own 50-image history
    pool, each with its own backward; plain ``torch.optim.Adam`` (not fused). The batch is copied to
    the device from ordinary (pageable) memory, as the reference's data loader delivers it.
(b) ``ours``: :meth:`medcyclegan.models.CycleGAN.train_step` with the fast path a training run gives it
    (:mod:`medcyclegan.runtime.precision`; on CUDA: bf16 autocast, channels-last, fused Adam, pinned
    batches; ``--compile`` adds torch.compile).

Both use the same networks (ResNet generator, 70x70 PatchGAN), start from the same weights and
get the same random batches (uniform in [-1, 1]; one A and one B batch per iteration). The two
loops are timed alternately, block by block, so that a change of machine load hits both alike;
warm-up iterations are excluded and the median time per iteration is reported, with
iterations/s, slices/s (= batch size x iterations/s, per domain) and the ratio ours/reference.
Peak memory is measured in a fresh child process per loop and batch size: on CUDA
``torch.cuda.max_memory_allocated``, on the CPU the peak resident set size (VmHWM) of the process
and its increase over the resident size after the imports.

Defaults: on CUDA the reference model at 256 x 256, batch 1 and 8. On the CPU (a full-size
iteration at 256 px takes about 18 s) two presets: ``quick`` (64 px, ngf 16, 3 blocks, ndf 16,
batch 1 and 4) and ``full`` (the reference ResNet-9 / PatchGAN at 128 px, batch 1 and 2, few
iterations).

Usage:
    python benchmarks/bench_train.py                        # CPU: quick and full presets
    python benchmarks/bench_train.py --device cuda          # 256 px, batch 1 and 8
    python benchmarks/bench_train.py --preset quick --iters 20 --batch-sizes 1,4,8
    python benchmarks/bench_train.py --size 192 --ngf 32 --n-blocks 6 --batch-sizes 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medcyclegan.runtime import resolve_device

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "size": 64,
        "ngf": 16,
        "n_blocks": 3,
        "ndf": 16,
        "batch_sizes": [1, 4],
        "iters": 10,
        "warmup": 2,
    },
    "full": {
        "size": 128,
        "ngf": 64,
        "n_blocks": 9,
        "ndf": 64,
        "batch_sizes": [1, 2],
        "iters": 3,
        "warmup": 1,
    },
    "gpu": {
        "size": 256,
        "ngf": 64,
        "n_blocks": 9,
        "ndf": 64,
        "batch_sizes": [1, 8],
        "iters": 30,
        "warmup": 10,
    },
}


@dataclass
class Scenario:
    """One model and image size, timed at several batch sizes."""

    name: str
    size: int
    ngf: int
    n_blocks: int
    ndf: int
    batch_sizes: list[int]
    iters: int
    warmup: int


# ----------------------------------------------------------------------------- reference loop
class ReferencePool:
    """The reference's image history: per image, store while not full, else 50 % swap with a stored one."""

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        chosen = []
        for image in images:
            image = image.detach().unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                chosen.append(image)
            elif random.uniform(0, 1) > 0.5:
                index = random.randint(0, self.pool_size - 1)
                old = self.images[index].clone()
                self.images[index] = image
                chosen.append(old)
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)


class ReferenceLoop:
    """A reference-style CycleGAN iteration (fp32, eager, plain Adam, two discriminator backwards)."""

    def __init__(self, nets: dict[str, torch.nn.Module], device: torch.device, pool_size: int = 50) -> None:
        self.g_ab, self.g_ba, self.d_a, self.d_b = (nets[k] for k in ("G_AB", "G_BA", "D_A", "D_B"))
        self.device = device
        self.lambda_cycle, self.lambda_identity = 10.0, 0.5
        params_g = itertools.chain(self.g_ab.parameters(), self.g_ba.parameters())
        params_d = itertools.chain(self.d_a.parameters(), self.d_b.parameters())
        self.opt_g = torch.optim.Adam(params_g, lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(params_d, lr=2e-4, betas=(0.5, 0.999))
        self.pool_a, self.pool_b = ReferencePool(pool_size), ReferencePool(pool_size)
        # The reference's GANLoss keeps its labels as buffers on the device.
        self.real_label = torch.tensor(1.0, device=device)
        self.fake_label = torch.tensor(0.0, device=device)

    def gan_loss(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        target = (self.real_label if real else self.fake_label).expand_as(prediction)
        return F.mse_loss(prediction, target)

    @staticmethod
    def set_requires_grad(nets: list[torch.nn.Module], flag: bool) -> None:
        for net in nets:
            for param in net.parameters():
                param.requires_grad = flag

    def backward_d(self, net: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> None:
        loss = 0.5 * (self.gan_loss(net(real), True) + self.gan_loss(net(fake.detach()), False))
        loss.backward()

    def step(self, batch_a: torch.Tensor, batch_b: torch.Tensor) -> None:
        real_a, real_b = batch_a.to(self.device), batch_b.to(self.device)
        fake_b = self.g_ab(real_a)
        rec_a = self.g_ba(fake_b)
        fake_a = self.g_ba(real_b)
        rec_b = self.g_ab(fake_a)
        self.set_requires_grad([self.d_a, self.d_b], False)
        self.opt_g.zero_grad()
        weight_idt = self.lambda_cycle * self.lambda_identity
        loss_idt_b = F.l1_loss(self.g_ab(real_b), real_b) * weight_idt
        loss_idt_a = F.l1_loss(self.g_ba(real_a), real_a) * weight_idt
        loss_g = (
            self.gan_loss(self.d_b(fake_b), True)
            + self.gan_loss(self.d_a(fake_a), True)
            + F.l1_loss(rec_a, real_a) * self.lambda_cycle
            + F.l1_loss(rec_b, real_b) * self.lambda_cycle
            + loss_idt_a
            + loss_idt_b
        )
        loss_g.backward()
        self.opt_g.step()
        self.set_requires_grad([self.d_a, self.d_b], True)
        self.opt_d.zero_grad()
        self.backward_d(self.d_b, real_b, self.pool_b.query(fake_b))
        self.backward_d(self.d_a, real_a, self.pool_a.query(fake_a))
        self.opt_d.step()


# ----------------------------------------------------------------------------- our model
def build_model(scenario: Scenario, batch: int, device: str, compile_: bool) -> Any:
    """Our CycleGAN as a training run builds it (precision policy of the runtime layer)."""
    from medcyclegan.config import load_config
    from medcyclegan.models import model_class
    from medcyclegan.runtime.precision import use_bf16, use_channels_last
    from medcyclegan.train.schedule import lr_rule

    cfg = load_config(
        None,
        {
            "data.image_size": scenario.size,
            "model.ngf": scenario.ngf,
            "model.n_blocks": scenario.n_blocks,
            "model.ndf": scenario.ndf,
            "optim.batch_size": batch,
            "train.device": device,
            "train.compile": compile_,
        },
    )
    torch_device = torch.device(device)
    model = model_class(cfg.model.kind)(
        cfg,
        torch_device,
        lr_rule(cfg.optim),
        amp=use_bf16(cfg.train.amp, torch_device),
        channels_last=use_channels_last(cfg.train.channels_last, torch_device),
    )
    model.wrap_for_training(compile_)
    return model


def make_batches(
    scenario: Scenario, batch: int, count: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 1, scenario.size, scenario.size)
    return [
        (torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1)
        for _ in range(count)
    ]


def as_model_batch(image: torch.Tensor, pin: bool) -> dict[str, torch.Tensor]:
    batch = {"image": image, "mask": (image > -0.9).float()}
    if pin:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def build_pair(scenario: Scenario, batch: int, device: torch.device, compile_: bool) -> tuple[Any, Any]:
    """Our model and a reference loop on copies of the same initial weights."""
    import copy

    model = build_model(scenario, batch, device.type, compile_)
    nets = {
        name: copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        for name, net in model.networks().items()
    }
    return model, ReferenceLoop(nets, device)


def build_reference(scenario: Scenario, device: torch.device) -> ReferenceLoop:
    """A reference loop with freshly initialised networks (for the memory measurement)."""
    from medcyclegan.config import ModelConfig
    from medcyclegan.nets import build_discriminator_from_config, build_generator

    model = ModelConfig(ngf=scenario.ngf, n_blocks=scenario.n_blocks, ndf=scenario.ndf)
    nets = {name: build_generator(model, 1, 1).to(device) for name in ("G_AB", "G_BA")}
    nets.update({name: build_discriminator_from_config(model, 1).to(device) for name in ("D_A", "D_B")})
    return ReferenceLoop(nets, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- memory (child process)
def _rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux), else the peak from getrusage."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_memory(args: argparse.Namespace) -> None:
    """Runs one loop alone for a few iterations and prints its peak memory as JSON."""
    # Imports both loops need happen before the baseline is taken.
    import medcyclegan.losses
    import medcyclegan.models
    import medcyclegan.nets.discriminator

    del medcyclegan

    scenario = Scenario(**json.loads(args.scenario))
    device = torch.device(args.device)
    baseline = _rss_mib("VmRSS")
    batches = make_batches(scenario, args.batch, 3)
    pin = device.type == "cuda"
    if args.child == "ours":
        model = build_model(scenario, args.batch, device.type, args.compile)
        steps = [
            lambda a=a, b=b: model.train_step({"A": as_model_batch(a, pin), "B": as_model_batch(b, pin)})
            for a, b in batches
        ]
    else:
        reference = build_reference(scenario, device)
        steps = [lambda a=a, b=b: reference.step(a, b) for a, b in batches]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in steps:
        step()
    _sync(device)
    result = {"rss_peak_mib": _rss_mib("VmHWM"), "rss_baseline_mib": baseline}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("RESULT " + json.dumps(result))


def measure_memory(
    scenario: Scenario, batch: int, device: torch.device, compile_: bool, threads: int
) -> dict[str, dict[str, float]]:
    out = {}
    for loop in ("reference", "ours"):
        command = [
            sys.executable,
            __file__,
            "--child",
            "ours" if loop == "ours" else "ref",
            "--scenario",
            json.dumps(asdict(scenario)),
            "--batch",
            str(batch),
            "--device",
            device.type,
            "--threads",
            str(threads),
        ] + (["--compile"] if compile_ else [])
        done = subprocess.run(command, capture_output=True, text=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not line:
            print(f"  memory child failed ({loop}): {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        out[loop] = json.loads(line[-1][len("RESULT ") :])
    return out


# ----------------------------------------------------------------------------- timing
def time_pair(
    scenario: Scenario, batch: int, device: torch.device, compile_: bool, block: int
) -> dict[str, list[float]]:
    """Seconds per iteration of each loop, blocks of ``block`` iterations alternating between the loops."""
    model, reference = build_pair(scenario, batch, device, compile_)
    pin = device.type == "cuda"
    batches = make_batches(scenario, batch, 4)
    ours_batches = [{"A": as_model_batch(a, pin), "B": as_model_batch(b, pin)} for a, b in batches]
    loops = {
        "reference": lambda i: reference.step(*batches[i % len(batches)]),
        "ours": lambda i: model.train_step(ours_batches[i % len(ours_batches)]),
    }
    times: dict[str, list[float]] = {name: [] for name in loops}
    counter = 0
    for phase, blocks in (("warmup", scenario.warmup), ("timed", scenario.iters)):
        for _ in range(blocks):
            for name, run in loops.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(block):
                    run(counter)
                    counter += 1
                _sync(device)
                if phase == "timed":
                    times[name].append((time.perf_counter() - start) / block)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--preset", default=None, help="quick, full, gpu, or a comma list [CPU: quick,full; CUDA: gpu]"
    )
    parser.add_argument("--size", type=int, help="image side in pixels (overrides the preset)")
    parser.add_argument("--ngf", type=int)
    parser.add_argument("--n-blocks", type=int)
    parser.add_argument("--ndf", type=int)
    parser.add_argument("--batch-sizes", help="comma list, e.g. 1,4")
    parser.add_argument("--iters", type=int, help="timed blocks per loop (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed blocks per loop")
    parser.add_argument("--block", type=int, default=None, help="iterations per timed block [CPU 1, CUDA 5]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch default]")
    parser.add_argument("--compile", action="store_true", help="torch.compile our networks (train.compile)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=("ours", "ref"), help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_memory(args)
        return
    device = resolve_device(args.device)
    names = (args.preset or ("gpu" if device.type == "cuda" else "quick,full")).split(",")
    scenarios = []
    for name in names:
        if name not in PRESETS:
            parser.error(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        scenario = Scenario(name=name, **PRESETS[name])
        for field in ("size", "ngf", "n_blocks", "ndf", "iters", "warmup"):
            if getattr(args, field) is not None:
                scenario = replace(scenario, **{field: getattr(args, field)})
        if args.batch_sizes:
            scenario = replace(scenario, batch_sizes=[int(b) for b in args.batch_sizes.split(",")])
        scenarios.append(scenario)
    block = args.block or (5 if device.type == "cuda" else 1)
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {threads} threads")
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    for scenario in scenarios:
        print(
            f"\n[{scenario.name}] {scenario.size}x{scenario.size}, ngf {scenario.ngf}, {scenario.n_blocks} blocks, "
            f"ndf {scenario.ndf}; median of {scenario.iters} blocks of {block} iteration(s) after {scenario.warmup} warm-up"
        )
        print(
            f"{'batch':>5} {'loop':>10} {'s/iter':>9} {'it/s':>8} {'slices/s':>9} {'peak MiB':>10} {'ratio':>7}"
        )
        for batch in scenario.batch_sizes:
            times = time_pair(scenario, batch, device, args.compile, block)
            memory = {} if args.no_memory else measure_memory(scenario, batch, device, args.compile, threads)
            medians = {name: statistics.median(values) for name, values in times.items()}
            for name in ("reference", "ours"):
                mem = memory.get(name, {})
                peak = mem.get("cuda_peak_mib", mem.get("rss_peak_mib"))
                ratio = medians["reference"] / medians[name]
                row = {
                    "preset": scenario.name,
                    "size": scenario.size,
                    "batch": batch,
                    "loop": name,
                    "seconds_per_iteration": medians[name],
                    "iterations_per_second": 1.0 / medians[name],
                    "slices_per_second": batch / medians[name],
                    "speed_vs_reference": ratio,
                    "all_seconds": times[name],
                    **mem,
                }
                results.append(row)
                peak_text = f"{peak:10.0f}" if peak is not None else f"{'-':>10}"
                if mem and "cuda_peak_mib" not in mem:
                    peak_text += f" (+{mem['rss_peak_mib'] - mem['rss_baseline_mib']:.0f})"
                print(
                    f"{batch:>5} {name:>10} {medians[name]:9.3f} {1 / medians[name]:8.2f} {batch / medians[name]:9.2f} {peak_text} {ratio:6.2f}x"
                )
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "ratio = reference s/iter / ours s/iter (> 1: ours faster); peak MiB: "
        + (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak RSS of a fresh process running that loop alone (+ increase over its RSS after imports)"
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The fast path computes what the plain fp32 path computes: one step from identical weights and data.

Tolerances (CPU, fp32): the fast path changes only the order of floating-point operations, so
losses agree to a relative 1e-5 and every gradient to 1e-4 of the largest gradient of its network.
After the first Adam step (about lr * sign(gradient) per weight) the weights agree to 1e-6 absolute
(0.5 % of lr 2e-4) wherever the gradient is at least 1e-3 of its network's largest; elsewhere (e.g.
the biases before an InstanceNorm, whose exact gradient is 0 and whose computed one is rounding
noise of either sign) they agree to 2 lr, the most two first Adam steps can differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny import TINY_MODEL, TrainedRun, files

from medcyclegan.config import load_config
from medcyclegan.errors import ConfigError
from medcyclegan.train.trainer import Trainer

NETS = ("G_AB", "G_BA", "D_A", "D_B")
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
WEIGHT_ATOL = 1e-6
SIGNAL = 1e-3


@pytest.fixture(scope="module")
def domains(trained_run: TrainedRun) -> tuple[list[Path], list[Path]]:
    """The session's training volumes (read-only); each test builds its own trainers on them."""
    return files(trained_run.mr), files(trained_run.ct)


def _config(**overrides):
    base = {
        **TINY_MODEL,
        "optim.pool_size": 4,
        "train.steps_per_epoch": 2,
        # Every loss term on, so that every code path of the step is compared.
        "model.generator": "resnet-attention",
        "loss.mask_loss": True,
        "loss.lambda_mask": 1.0,
    }
    base.update(overrides)
    return load_config(None, base)


def _trainer(domains, tmp_path: Path, name: str, **overrides) -> Trainer:
    mr, ct = domains
    return Trainer(_config(**overrides), tmp_path / name, mr, ct, show_progress=False)


def _step_and_compare(plain: Trainer, fast: Trainer) -> None:
    for name in NETS:
        for (key, a), b in zip(
            getattr(plain.model, name).state_dict().items(), getattr(fast.model, name).state_dict().values()
        ):
            assert torch.equal(a, b), f"{name}.{key} differs before the step"
    batch = next(iter(plain.data.epoch(0)))
    losses_plain = plain.model.train_step(batch)
    losses_fast = fast.model.train_step(batch)
    for key, value in losses_plain.items():
        torch.testing.assert_close(losses_fast[key], value, rtol=LOSS_RTOL, atol=1e-7, msg=key)
    lr = plain.cfg.optim.lr
    for name in NETS:
        pairs = list(
            zip(getattr(plain.model, name).named_parameters(), getattr(fast.model, name).parameters())
        )
        scale = max(float(a.grad.abs().max()) for (_, a), _ in pairs)
        for (key, a), b in pairs:
            torch.testing.assert_close(
                b.grad, a.grad, rtol=0, atol=GRAD_RTOL * scale, msg=f"grad {name}.{key}"
            )
            signal = a.grad.abs() >= SIGNAL * scale
            torch.testing.assert_close(b[signal], a[signal], rtol=0, atol=WEIGHT_ATOL, msg=f"{name}.{key}")
            torch.testing.assert_close(b, a, rtol=0, atol=2 * lr * 1.001, msg=f"{name}.{key}")


def test_channels_last_step_matches_the_plain_step(domains, tmp_path: Path) -> None:
    plain = _trainer(domains, tmp_path, "plain", **{"train.channels_last": False})
    fast = _trainer(domains, tmp_path, "fast", **{"train.channels_last": True})
    assert not plain.channels_last and fast.channels_last
    conv = fast.model.G_AB.encoder[0]
    weights = [p for p in fast.model.G_AB.parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights), conv
    assert not all(p.is_contiguous() for p in weights)
    _step_and_compare(plain, fast)


def test_channels_last_defaults_to_off_on_the_cpu(domains, tmp_path: Path) -> None:
    trainer = _trainer(domains, tmp_path, "default")
    assert trainer.cfg.train.channels_last is None and not trainer.channels_last
    with pytest.raises(ConfigError, match=r"train\.compile"):
        _config(**{"train.compile": "fast"})


def test_resume_into_channels_last_relayouts_the_optimiser(domains, tmp_path: Path) -> None:
    mr, ct = domains
    first = _trainer(domains, tmp_path, "run", **{"train.channels_last": False})
    batch = next(iter(first.data.epoch(0)))
    first.model.train_step(batch)
    first.save("last.pt")
    resumed = Trainer(
        _config(**{"train.channels_last": True}),
        tmp_path / "run",
        mr,
        ct,
        resume=tmp_path / "run",
        show_progress=False,
    )
    assert resumed.cfg.train.channels_last is True  # a run-control field: may change on resume
    for group in resumed.model.opt_G.param_groups:
        for param in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                assert resumed.model.opt_G.state[param][key].stride() == param.stride(), key
    resumed.model.train_step(batch)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MEDCYCLEGAN_TEST_COMPILE") != "1",
    reason="torch.compile needs about 100 s of C++ compilation on a 2-core CPU; "
    "set MEDCYCLEGAN_TEST_COMPILE=1 to run it",
)
def test_compiled_channels_last_step_matches_the_plain_step(domains, tmp_path: Path) -> None:
    plain = _trainer(domains, tmp_path, "plain", **{"train.channels_last": False})
    fast = _trainer(domains, tmp_path, "fast", **{"train.channels_last": True, "train.compile": True})
    _step_and_compare(plain, fast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_never_waits_for_the_gpu(domains, tmp_path: Path) -> None:
    """No host synchronisation inside the step (bf16, channels-last, fused Adam, pinned batches)."""
    trainer = _trainer(domains, tmp_path, "cuda", **{"train.device": "cuda"})
    assert trainer.amp and trainer.channels_last
    batch = {
        domain: {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in items.items()}
        for domain, items in next(iter(trainer.data.epoch(0))).items()
    }
    for _ in range(6):  # past warm-up and until the image pools are full (pool_size 4, batch 2)
        trainer.model.train_step(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.model.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")

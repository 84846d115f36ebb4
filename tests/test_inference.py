"""The one slice-wise inference path (medcyclegan.inference): padding, batching, 2.5D, pluggable translators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcyclegan.config import ModelConfig
from medcyclegan.data.normalise import AIR_NORMALISED
from medcyclegan.inference import context_stack, stride_multiple_of, translate_array, translate_slices
from medcyclegan.nets import build_generator
from medcyclegan.nets.generator import AttentionResnetGenerator, ResnetGenerator


def tiny_generator(kind: str = "resnet", channels: int = 3) -> ResnetGenerator:
    torch.manual_seed(0)
    return build_generator(ModelConfig(generator=kind, ngf=2, n_blocks=1), channels, channels)


def volume(shape: tuple[int, int, int] = (10, 7, 5)) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


class Recorder:
    """A plain callable translator (no nn.Module): records its inputs, returns them unchanged."""

    stride_multiple = 4

    def __init__(self, with_attention: bool = False) -> None:
        self.inputs: list[torch.Tensor] = []
        self.with_attention = with_attention

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x.clone())
        if self.with_attention:
            return x, torch.full_like(x[:, :1], 0.25)
        return x


def test_the_stride_multiple_is_computed_from_the_generators_downsampling() -> None:
    generator = tiny_generator()
    stride_2 = [m for m in generator.encoder.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(stride_2) == ResnetGenerator.n_downsampling
    assert (
        ResnetGenerator.stride_multiple == 2**ResnetGenerator.n_downsampling == stride_multiple_of(generator)
    )
    assert AttentionResnetGenerator.stride_multiple == ResnetGenerator.stride_multiple
    assert ResnetGenerator.min_input_size == ResnetGenerator.stride_multiple + 1


def test_slices_are_padded_with_air_to_the_stride_multiple_and_cropped_back() -> None:
    recorder = Recorder()
    image = volume((10, 7, 5))
    translated, attention = translate_slices(recorder, image, np.array([0, 4]), context_slices=1)
    (batch,) = recorder.inputs
    assert batch.shape == (2, 3, 12, 8)  # 10 -> 12, 7 -> 8: multiples of 4
    assert AIR_NORMALISED == -1.0
    assert (batch[:, :, 10:, :] == AIR_NORMALISED).all() and (batch[:, :, :, 7:] == AIR_NORMALISED).all()
    # The centre channel of the identity translation is the slice itself, on its own grid.
    np.testing.assert_array_equal(translated, np.moveaxis(image[:, :, [0, 4]], 2, 0))
    assert translated.dtype == np.float32 and translated.flags.c_contiguous and attention is None
    # 2.5D context: neighbours as channels, edges replicated.
    np.testing.assert_array_equal(batch[:, :, :10, :7].numpy(), context_stack(image, np.array([0, 4]), 1))


def test_a_plain_callable_translates_exactly_as_the_generator_it_wraps() -> None:
    generator = tiny_generator().eval()
    image = volume()

    def session(x: torch.Tensor) -> tuple[torch.Tensor, None]:  # e.g. an ONNX session wrapper
        return generator(x), None

    expected = translate_array(generator, image, context_slices=1, batch_size=2)
    with pytest.raises(TypeError, match="stride_multiple"):
        translate_array(session, image, context_slices=1, batch_size=2)
    got = translate_array(session, image, context_slices=1, batch_size=2, stride_multiple=4)
    np.testing.assert_array_equal(got, expected)


def test_whole_volumes_are_the_batches_of_translate_slices_and_the_attention_comes_along() -> None:
    generator = tiny_generator("resnet-attention").train()
    image = volume()
    out, attention = translate_array(generator, image, context_slices=1, batch_size=2, return_attention=True)
    assert generator.training  # the mode is restored
    for z in ([0, 1], [2, 3], [4]):
        part, mask = translate_slices(generator, image, np.array(z), context_slices=1)
        np.testing.assert_array_equal(out[:, :, z], np.moveaxis(part, 0, -1))
        np.testing.assert_array_equal(attention[:, :, z], np.moveaxis(mask, 0, -1))
    assert ((attention > 0) & (attention < 1)).all()
    # A callable returning (output, attention) gives its attention too; a plain one zeros.
    _, given = translate_array(Recorder(with_attention=True), image, return_attention=True)
    assert (given == 0.25).all()
    _, none = translate_array(Recorder(), image, return_attention=True)
    assert (none == 0).all()

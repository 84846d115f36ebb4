"""The one slice-wise inference path (medcyclegan.inference): padding, batching, 2.5D, pluggable translators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcyclegan.config import ModelConfig, check_planes
from medcyclegan.data.normalise import AIR_NORMALISED
from medcyclegan.data.prepare import isotropic_depth
from medcyclegan.data.slices import pad_or_crop
from medcyclegan.errors import ConfigError
from medcyclegan.inference import (
    canvas_padding,
    context_stack,
    stride_multiple_of,
    translate_array,
    translate_planes,
    translate_slices,
)
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


def test_slices_smaller_than_the_canvas_are_centred_on_air_as_training_pads_them() -> None:
    recorder = Recorder()
    image = volume((10, 7, 5))
    # X 10 and Y 7 both below a 16 px canvas: centred on 16 x 16, already a multiple of 4.
    translated, _ = translate_slices(recorder, image, np.array([1, 3]), context_slices=1, canvas=16)
    (batch,) = recorder.inputs
    assert batch.shape == (2, 3, 16, 16)
    stack = context_stack(image, np.array([1, 3]), 1)
    # Exactly the canvas training's pad/crop (MONAI's symmetric SpatialPad) gives each slice.
    for i in range(2):
        np.testing.assert_array_equal(batch[i].numpy(), np.asarray(pad_or_crop(stack[i], 16)))
    np.testing.assert_array_equal(translated, np.moveaxis(image[:, :, [1, 3]], 2, 0))
    # Only the axis below the canvas is centred; the other keeps the stride padding at its high end.
    recorder.inputs.clear()
    translate_slices(recorder, volume((10, 30, 2)), np.array([0]), canvas=16)
    (batch,) = recorder.inputs
    assert batch.shape == (1, 1, 16, 32)
    assert (batch[0, 0, :3] == AIR_NORMALISED).all() and (batch[0, 0, 13:] == AIR_NORMALISED).all()
    assert (batch[0, 0, :, 30:] == AIR_NORMALISED).all() and not (
        batch[0, 0, 3:13, :30] == AIR_NORMALISED
    ).any()


def test_canvas_padding_is_monais_symmetric_split_then_the_stride_multiple() -> None:
    assert canvas_padding(64, 96, 4) == (16, 16)
    assert canvas_padding(61, 96, 4) == (17, 18)  # MONAI: before = width // 2
    assert canvas_padding(95, 96, 8) == (0, 1 + 0)  # 96 is a multiple of 8
    assert canvas_padding(97, 96, 4) == (0, 3)  # larger than the canvas: stride padding only
    assert canvas_padding(10, 0, 4) == (0, 2)


def test_a_border_sensitive_generator_sees_on_the_canvas_what_training_showed_it() -> None:
    # The ResNet pads by reflection: a body at the slice's edge is mirrored into it, unless the
    # slice is first centred on air as in training. On the canvas the result is the centre crop of
    # translating the padded slice; without it, it differs.
    generator = tiny_generator(channels=1).eval()
    image = volume((12, 12, 2))
    on_canvas = translate_array(generator, image, canvas=20)
    padded = np.stack([np.asarray(pad_or_crop(image[None, :, :, z], 20))[0] for z in range(2)], axis=-1)
    expected = translate_array(generator, padded)[4:16, 4:16]
    np.testing.assert_allclose(on_canvas, expected, atol=1e-6)
    assert np.abs(translate_array(generator, image) - on_canvas).max() > 1e-3


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


class Ramp:
    """An asymmetric translator: centre output = channel ``source`` of the input + ``slope`` * X index.

    X is the first slice axis, counted over the padded batch; the attention mask is the X index too.
    """

    stride_multiple = 4

    def __init__(self, source: int = 0, slope: float = 0.25, with_attention: bool = False) -> None:
        self.source, self.slope, self.with_attention = source, slope, with_attention
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.shapes.append(tuple(x.shape))
        ramp = torch.arange(x.shape[2], dtype=torch.float32)[None, None, :, None]
        out = x[:, self.source : self.source + 1] + self.slope * ramp
        out = out.expand(-1, x.shape[1], -1, -1)
        if self.with_attention:
            return out, ramp.expand(x.shape[0], 1, -1, x.shape[3])
        return out


def test_flip_averaging_a_flip_equivariant_translator_changes_nothing() -> None:
    image = volume((10, 7, 5))  # odd sizes: padded at the high end, so mirrored before padding

    def pointwise(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2 * x + 0.3)

    for k in (0, 1):
        plain = translate_array(pointwise, image, context_slices=k, stride_multiple=4)
        averaged = translate_array(pointwise, image, context_slices=k, stride_multiple=4, flip_average=True)
        np.testing.assert_array_equal(averaged, plain)
    # A convolution whose kernel is symmetric along X, on sizes the stride needs no padding for.
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(conv.weight + conv.weight.flip(2))
    conv.stride_multiple = 4  # type: ignore[attr-defined]
    even = volume((8, 12, 4))
    plain = translate_array(conv, even, context_slices=1)
    np.testing.assert_allclose(
        translate_array(conv, even, context_slices=1, flip_average=True), plain, atol=1e-6
    )


def test_flip_averaging_is_the_mean_with_the_mirrored_translation_of_the_mirrored_slices() -> None:
    image = volume((10, 7, 5))
    nx = image.shape[0]
    # Centre output = the inferior context channel + a ramp along X: the mirrored pass sees every
    # channel mirrored, and mirroring its translation back turns the ramp around.
    ramp = Ramp(source=0, slope=0.25, with_attention=True)
    out, attention = translate_array(
        ramp, image, context_slices=1, batch_size=2, flip_average=True, return_attention=True
    )
    inferior = image[:, :, np.clip(np.arange(5) - 1, 0, 4)]
    np.testing.assert_allclose(out, inferior + 0.25 * (nx - 1) / 2, atol=1e-6)
    np.testing.assert_allclose(attention, np.full(image.shape, (nx - 1) / 2), atol=1e-6)
    # Without averaging, the ramp itself.
    plain = translate_array(ramp, image, context_slices=1)
    np.testing.assert_allclose(plain, inferior + 0.25 * np.arange(nx)[:, None, None], atol=1e-6)
    # Two forward passes of the same batch size, both padded at the high end: (2, 3, 12, 8).
    ramp.shapes.clear()
    translate_slices(ramp, image, np.array([0, 1]), context_slices=1, flip_average=True)
    assert ramp.shapes == [(2, 3, 12, 8), (2, 3, 12, 8)]


def test_planes_are_checked_naming_the_option() -> None:
    assert check_planes("axial") == ("axial",)
    assert check_planes("sagittal, axial") == ("sagittal", "axial")
    assert check_planes(["coronal"]) == ("coronal",)
    for bad, problem in [
        ("axial,axial", "names 'axial' twice"),
        ("foo", "has an unknown plane 'foo'"),
        ("", "is empty"),
        ([], "is empty"),
        ("axial,", "has an unknown plane ''"),
    ]:
        with pytest.raises(ConfigError, match=f"--planes {problem}"):
            check_planes(bad, "--planes")


def test_each_plane_is_translated_along_its_own_slices_and_the_planes_averaged() -> None:
    image = volume((9, 7, 6))
    # Isotropic voxels: no resampling, so the ramp along each plane's first slice axis shows exactly:
    # X for axial (X, Y) and coronal (X, Z) slices, Y for sagittal (Y, Z) slices.
    ramp = Ramp(source=0, slope=0.5)
    out, attention = translate_planes(ramp, image, (1.0, 1.0, 1.0), ["axial", "coronal", "sagittal"])
    x, y = np.arange(9)[:, None, None], np.arange(7)[None, :, None]
    np.testing.assert_allclose(out, image + 0.5 * (2 * x + y) / 3, atol=1e-6)
    assert attention is None
    (coronal,) = translate_planes(ramp, image, (1.0, 1.0, 1.0), ["coronal"])[:1]
    np.testing.assert_allclose(coronal, image + 0.5 * x, atol=1e-6)
    # Axial alone is translate_array exactly.
    axial, _ = translate_planes(ramp, image, (1.0, 1.0, 1.0), ["axial"], flip_average=True)
    np.testing.assert_array_equal(axial, translate_array(ramp, image, flip_average=True))


def test_flip_averaging_mirrors_r_l_in_every_plane() -> None:
    image = volume((9, 7, 6))
    y = np.arange(7)[None, :, None]
    ramp = Ramp(source=0, slope=0.5)
    # Coronal slices have X first: the ramp is turned around as in axial slices.
    coronal, _ = translate_planes(ramp, image, (1.0, 1.0, 1.0), ["coronal"], flip_average=True)
    np.testing.assert_allclose(coronal, image + 0.5 * 4, atol=1e-6)
    # Sagittal slices are stacked along X: the R-L mirror reverses the context channels (the
    # inferior neighbour, here along X, becomes the superior one); the Y ramp stays.
    sagittal, _ = translate_planes(
        ramp, image, (1.0, 1.0, 1.0), ["sagittal"], context_slices=1, flip_average=True
    )
    left, right = image[np.clip(np.arange(9) - 1, 0, 8)], image[np.clip(np.arange(9) + 1, 0, 8)]
    np.testing.assert_allclose(sagittal, (left + right) / 2 + 0.5 * y, atol=1e-6)
    # Without context a 2D translator gives exactly the mirrored result: one pass only.
    ramp.shapes.clear()
    plain, _ = translate_planes(ramp, image, (1.0, 1.0, 1.0), ["sagittal"], batch_size=16)
    flipped, _ = translate_planes(
        ramp, image, (1.0, 1.0, 1.0), ["sagittal"], batch_size=16, flip_average=True
    )
    np.testing.assert_array_equal(flipped, plain)
    assert len(ramp.shapes) == 2


def test_coronal_and_sagittal_slices_are_taken_at_isotropic_voxels_and_resampled_back() -> None:
    # 2 x 2 mm in-plane, 4 mm slices: 5 slices become 10 before coronal and sagittal slicing.
    assert isotropic_depth((12, 9, 5), (2.0, 2.0, 4.0)) == 10
    assert isotropic_depth((12, 9, 5), (2.0, 2.0, 1.0)) == 2
    assert isotropic_depth((12, 9, 1), (3.0, 3.0, 1.0)) == 1
    z = np.linspace(-0.8, 0.8, 5, dtype=np.float32)
    image = np.broadcast_to(z, (12, 9, 5)).copy()  # varies along Z only
    recorder = Recorder(with_attention=True)
    out, attention = translate_planes(
        recorder, image, (2.0, 2.0, 4.0), ["coronal", "sagittal"], batch_size=64, return_attention=True
    )
    # One batch per plane: coronal (X, Z') slices at each Y, sagittal (Y, Z') at each X, padded to 4.
    assert [tuple(b.shape) for b in recorder.inputs] == [(9, 1, 12, 12), (12, 1, 12, 12)]
    assert out.shape == image.shape and out.dtype == np.float32
    # Up to 10 slices and back: an identity translation keeps the Z profile (interpolation aside).
    np.testing.assert_allclose(out, image, atol=0.1)
    np.testing.assert_allclose(out[:, :, 1:-1], image[:, :, 1:-1], atol=1e-6)
    np.testing.assert_allclose(attention, 0.25, atol=1e-6)
    # In-plane values are never interpolated: a volume constant along Z comes back exactly.
    flat = np.broadcast_to(volume((12, 9, 1)), (12, 9, 5)).copy()
    np.testing.assert_allclose(
        translate_planes(Recorder(), flat, (2.0, 2.0, 4.0), ["coronal"])[0], flat, atol=1e-6
    )

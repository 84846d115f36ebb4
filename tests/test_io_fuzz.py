"""Fuzzing read_volume: random and mutated bytes give a valid volume or an InputError, nothing else.

Seeds are tiny valid files (.nii.gz, .nii, .nrrd raw, gzip and ascii, .mha zlib and raw). Mutations
overwrite, insert and delete bytes (biased towards the headers, where parsing happens) and truncate;
for .nii.gz the uncompressed content is also mutated and recompressed, so that the NIfTI parser, not
only gzip, gets bad input.
Set MEDCYCLEGAN_FUZZ_EXAMPLES to run a longer campaign.
"""

from __future__ import annotations

import functools
import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcyclegan.errors import InputError
from medcyclegan.io import read_volume

MAX_EXAMPLES = int(os.environ.get("MEDCYCLEGAN_FUZZ_EXAMPLES", "50"))
HEADER_BYTES = 400


@functools.cache
def seeds() -> dict[str, tuple[str, bytes]]:
    """Valid tiny files: name -> (suffix, bytes). ``nii-content-gz`` is recompressed after mutation."""
    import SimpleITK as sitk

    array = (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 7 - 50).astype(np.int16)
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    nii = image.to_bytes()
    found = {
        "nii": (".nii", nii),
        "nii.gz": (".nii.gz", gzip.compress(nii)),
        "nii-content-gz": (".nii.gz", nii),
    }
    with tempfile.TemporaryDirectory() as folder:
        itk_image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
        itk_image.SetSpacing((0.5, 0.6, 2.0))
        itk_image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        for name, suffix, compress in (
            ("nrrd", ".nrrd", False),
            ("nrrd-gzip", ".nrrd", True),
            ("mha", ".mha", True),
            ("mha-raw", ".mha", False),
        ):
            path = Path(folder) / f"{name}{suffix}"
            sitk.WriteImage(itk_image, str(path), useCompression=compress)
            found[name] = (suffix, path.read_bytes())
    values = " ".join(str(v) for v in array.ravel(order="F"))
    found["nrrd-ascii"] = (
        ".nrrd",
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nspacings: 1.5 1.5 2\nencoding: ascii\n\n"
        + values.encode(),
    )
    return found


SEED_NAMES = ["nii", "nii.gz", "nii-content-gz", "nrrd", "nrrd-gzip", "mha", "mha-raw", "nrrd-ascii"]


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix, data = seeds()[draw(st.sampled_from(SEED_NAMES))]
    recompress = data[:2] != b"\x1f\x8b" and suffix == ".nii.gz"
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not buffer:
            break
        limit = min(len(buffer), HEADER_BYTES) if draw(st.booleans()) else len(buffer)
        position = draw(st.integers(0, limit - 1))
        kind = draw(st.sampled_from(["set", "set", "xor", "insert", "delete"]))
        if kind == "set":
            buffer[position] = draw(st.integers(0, 255))
        elif kind == "xor":
            buffer[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buffer[position : position + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        buffer = buffer[: draw(st.integers(0, len(buffer)))]
    content = bytes(buffer)
    return suffix, gzip.compress(content) if recompress else content


random_files = st.tuples(st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]), st.binary(max_size=1024))


@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=MAX_EXAMPLES <= 50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.one_of(mutated_files(), random_files))
def test_read_volume_raises_only_input_error(case: tuple[str, bytes]) -> None:
    suffix, content = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(content)
        try:
            volume = read_volume(path)
        except InputError as error:
            message = str(error)
            assert message.startswith(f"{path}: ") and "\n" not in message
            return
    assert volume.array.ndim == 3
    assert volume.array.shape == volume.geometry.ras_shape
    if np.issubdtype(volume.array.dtype, np.floating):
        assert np.isfinite(volume.array).all()
    assert np.isfinite(volume.affine).all()


def test_seeds_are_valid() -> None:
    """The unmutated seeds read back (so the mutations start from real files)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, (suffix, data) in seeds().items():
            path = Path(folder) / f"{name.replace('.', '_')}{suffix}"
            path.write_bytes(gzip.compress(data) if name == "nii-content-gz" else data)
            assert read_volume(path).shape[2] == 4

"""A file given where a checkpoint belongs: images and text are named for what they are, not "corrupted"."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.errors import CheckpointError


def _nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
    return path


def _bytes(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


def _itk(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(path))
    return path


FOREIGN = {
    "scan.nii": (_nifti, "a NIfTI image"),
    "scan.nii.gz": (_nifti, "a gzip file"),
    "scan.nrrd": (_itk, "an NRRD image"),
    "scan.mha": (_itk, "a MetaImage"),
    "slice.dcm": (_bytes(b"\0" * 128 + b"DICM" + b"\2\0" * 64), "a DICOM file"),
    "model.safetensors": (_bytes(len(b'{"w":{}}').to_bytes(8, "little") + b'{"w":{}}'), "a safetensors file"),
    "config.yaml": (_bytes(b"model:\n  kind: cyclegan\n"), "a text file"),
    "binary.pt": (_bytes(b"\x01\x02\x00\xff" * 64), "neither a zip archive nor a pickle"),
}


@pytest.mark.parametrize("name", list(FOREIGN))
def test_a_foreign_file_is_named_for_what_it_is(name: str, tmp_path: Path) -> None:
    make, what = FOREIGN[name]
    path = make(tmp_path / name)
    with pytest.raises(CheckpointError, match=f"not a medcyclegan checkpoint: it is {what}") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_gzipped_checkpoint_is_not_mistaken_for_one(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"format": "medcyclegan-checkpoint", "w": torch.ones(2)}, good)
    packed = tmp_path / "good.pt.gz"
    packed.write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(CheckpointError, match="gzip file"):
        load_checkpoint(packed)


def test_torch_files_still_reach_the_safe_loader(tmp_path: Path) -> None:
    zipped = tmp_path / "zip.pt"
    torch.save({"format": "medcyclegan-checkpoint", "w": torch.ones(2)}, zipped)
    assert torch.equal(load_checkpoint(zipped)["w"], torch.ones(2))
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"format": "medcyclegan-checkpoint", "w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False
    )
    assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(2))
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as handle:
        pickle.dump({"format": "medcyclegan-checkpoint"}, handle)
    with pytest.raises(CheckpointError) as info:  # a bare pickle reaches torch's loader, which refuses it
        load_checkpoint(plain)
    assert "it is" not in str(info.value)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(zipped.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(truncated)

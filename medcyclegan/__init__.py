"""medcyclegan: unpaired medical image translation (MRI <-> CT) with CycleGAN.

Volumes go in (NIfTI, NRRD/MHA, DICOM series), are oriented to RAS, normalised by modality and
sliced for a 2D CycleGAN; translated volumes go back out with exactly the input's geometry, CT in
Hounsfield units.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

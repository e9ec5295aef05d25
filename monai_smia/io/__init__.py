"""Reading CT sources and writing adversarial copies on the source grid (NIfTI and DICOM)."""

from __future__ import annotations

from monai_smia.io.dicom_series import (
    DicomSeriesReport,
    LoadSeriesImage,
    LoadSeriesImaged,
    SingleSeriesITKReader,
    dicom_voxel_index,
    find_dicom_series,
    write_adversarial_dicom_series,
)
from monai_smia.io.source_grid import (
    NiftiReport,
    invert_perturbation,
    load_source_volume,
    rounding_survival,
    save_adversarial_nifti,
)

__all__ = [
    "DicomSeriesReport",
    "LoadSeriesImage",
    "LoadSeriesImaged",
    "NiftiReport",
    "SingleSeriesITKReader",
    "dicom_voxel_index",
    "find_dicom_series",
    "invert_perturbation",
    "load_source_volume",
    "rounding_survival",
    "save_adversarial_nifti",
    "write_adversarial_dicom_series",
]

"""Reading CT sources and writing adversarial copies on the source grid (NIfTI and DICOM), atomically."""

from __future__ import annotations

from monai_smia.io.dicom_read import (
    LoadSeriesImage,
    LoadSeriesImaged,
    SeriesFolderReader,
    SingleSeriesITKReader,
    check_dicom_series,
    find_dicom_series,
)
from monai_smia.io.dicom_write import DicomSeriesReport, dicom_voxel_index, write_adversarial_dicom_series
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
    "SeriesFolderReader",
    "NiftiReport",
    "SingleSeriesITKReader",
    "check_dicom_series",
    "dicom_voxel_index",
    "find_dicom_series",
    "invert_perturbation",
    "load_source_volume",
    "rounding_survival",
    "save_adversarial_nifti",
    "write_adversarial_dicom_series",
]

"""The real CT cases of the shared data folder that data_prep.lung_ct converts, and where each lung label comes from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AIR_HU", "CASES", "INDEPENDENT_SOURCES", "LABEL_SOURCES", "PATIENT_SPLIT", "CTCase"]

LABEL_SOURCES = ("cip_wholelung", "totalsegmentator_lobes", "hu_threshold")
INDEPENDENT_SOURCES = ("cip_wholelung", "totalsegmentator_lobes")
AIR_HU = -1024


@dataclass(frozen=True)
class CTCase:
    """One real CT in the shared data folder and how its lung label is obtained.

    Attributes:
        case: output name.
        patient: patient (or series) identifier used for the split.
        image: path relative to the data folder (a file, or a folder holding one DICOM series).
        label: path of the label map relative to the data folder, or None for an HU threshold mask.
        label_source: one of :data:`LABEL_SOURCES`.
        lung_values: label values that make up the lungs (empty: any non-zero value).
        label_names: JSON file mapping label values to names, checked to contain "lung" for every
            value of ``lung_values`` (guards against an unknown label map).
        allow_empty: the CT holds no lung (a negative example); otherwise an empty label is an error.
    """

    case: str
    patient: str
    image: str
    label: str | None
    label_source: str
    lung_values: tuple[int, ...] = ()
    label_names: str | None = None
    allow_empty: bool = False


TS = "ct/totalsegmentator"
CASES: tuple[CTCase, ...] = (
    CTCase("lung_pet_ct_dx_A0001", "Lung_Dx-A0001", "ct/chest/lung_pet_ct_dx_A0001", None, "hu_threshold"),
    CTCase("lung_pet_ct_dx_A0002", "Lung_Dx-A0002", "ct/chest/lung_pet_ct_dx_A0002", None, "hu_threshold"),
    CTCase(
        "cip_copdgene_10002K",
        "COPDGene_10002K",
        "ct/chest/cip_copdgene_64/ct-64.nrrd",
        "ct/chest/cip_copdgene_64/wholeLung-64.nrrd",
        "cip_wholelung",
    ),
    CTCase(
        "ts_example_ct",
        "totalsegmentator_example",
        f"{TS}/example_ct.nii.gz",
        f"{TS}/example_seg_v1.nii.gz",
        "totalsegmentator_lobes",
        (13, 14, 15, 16, 17),
        f"{TS}/labels_v1.json",
    ),
    CTCase(
        "ts_example_ct_sm",
        "totalsegmentator_example",
        f"{TS}/example_ct_sm.nii.gz",
        f"{TS}/example_seg.nii.gz",
        "totalsegmentator_lobes",
        (10, 11, 12, 13, 14),
        f"{TS}/labels_v2.json",
    ),
    CTCase(
        "ts_example_dicom",
        "totalsegmentator_dicom_example",
        f"{TS}/example_ct_dicom",
        f"{TS}/example_seg_dicom.nii.gz",
        "totalsegmentator_lobes",
        (10, 11, 12, 13, 14),
        f"{TS}/labels_v2.json",
        allow_empty=True,
    ),
    CTCase(
        "ts_pulm_ct_cropped", "totalsegmentator_contrast_chest", f"{TS}/pulm_ct_cropped.nii.gz", None, "hu_threshold"
    ),
    CTCase(
        "ts_aorta_ct_cropped", "totalsegmentator_contrast_chest", f"{TS}/aorta_ct_cropped.nii.gz", None, "hu_threshold"
    ),
)

PATIENT_SPLIT: dict[str, str] = {
    "Lung_Dx-A0001": "training",
    "totalsegmentator_dicom_example": "training",
    "totalsegmentator_contrast_chest": "validation",
    "Lung_Dx-A0002": "test",
    "COPDGene_10002K": "test",
    "totalsegmentator_example": "test",
}

"""Detection for SMIA (Qi et al., ICLR 2021): a MONAI RetinaNet victim, its data, metrics, attacks and evaluation."""

from __future__ import annotations

from monai_smia.apps.detection.attack import (
    DETECTION_ATTACKS,
    DetectionDAG,
    DetectionFGSM,
    DetectionNoise,
    DetectionPGD,
    DetectionSMIA,
    DetectorHeads,
    make_detection_attack,
)
from monai_smia.apps.detection.data import DetectionSet, check_boxes, load_detection_split
from monai_smia.apps.detection.metrics import centre_box_baseline, detect, detection_metrics
from monai_smia.apps.detection.network import ATSSRetinaNetDetector, retinanet_detector, retinanet_network

__all__ = [
    "DETECTION_ATTACKS",
    "ATSSRetinaNetDetector",
    "DetectionDAG",
    "DetectionFGSM",
    "DetectionNoise",
    "DetectionPGD",
    "DetectionSMIA",
    "DetectionSet",
    "DetectorHeads",
    "centre_box_baseline",
    "check_boxes",
    "detect",
    "detection_metrics",
    "load_detection_split",
    "make_detection_attack",
    "retinanet_detector",
    "retinanet_network",
]

"""Metrics of a robustness evaluation: perturbation statistics, task metrics, the one success definition,
bootstrap statistics."""

from __future__ import annotations

from monai_smia.metrics.paired import DOES_NOT_HOLD, HOLDS, PairedComparison, compare_paired, paired_differences
from monai_smia.metrics.perturbation import (
    PERTURBATION_STATISTICS,
    PerturbationMetric,
    perturbation_case_metrics,
    perturbation_statistics,
    psnr_per_case,
    ssim_per_case,
)
from monai_smia.metrics.statistics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_statistic_ci,
    percentile_interval,
    resampled_one_vs_rest_fpr,
    resampled_roc_auc_one_vs_rest,
)
from monai_smia.metrics.success import (
    case_success,
    classification_attack_success,
    segmentation_attack_success,
    success_rate,
)
from monai_smia.metrics.task import (
    class_indices,
    classification_case_metrics,
    one_vs_rest_fpr,
    predicted_classes,
    roc_auc_one_vs_rest,
    segmentation_case_metrics,
    top1_accuracy,
    top1_correct,
)

__all__ = [
    "DOES_NOT_HOLD",
    "HOLDS",
    "PairedComparison",
    "compare_paired",
    "paired_differences",
    "PERTURBATION_STATISTICS",
    "PerturbationMetric",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_statistic_ci",
    "class_indices",
    "case_success",
    "classification_attack_success",
    "classification_case_metrics",
    "one_vs_rest_fpr",
    "percentile_interval",
    "perturbation_case_metrics",
    "perturbation_statistics",
    "predicted_classes",
    "psnr_per_case",
    "resampled_one_vs_rest_fpr",
    "resampled_roc_auc_one_vs_rest",
    "roc_auc_one_vs_rest",
    "segmentation_attack_success",
    "segmentation_case_metrics",
    "ssim_per_case",
    "success_rate",
    "top1_accuracy",
    "top1_correct",
]

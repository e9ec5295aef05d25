"""Workflows users run, one sub-package each: robustness evaluation, adversarial export, reproduction of the paper,
detection, data preparation (``python -m`` entry points), and the demo."""

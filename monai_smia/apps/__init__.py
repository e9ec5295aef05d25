"""Workflows users run: robustness evaluation, adversarial export, demo and data preparation (``python -m`` entry points)."""

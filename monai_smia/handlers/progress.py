"""Ignite handlers for bundle configs."""

from __future__ import annotations

from typing import Any

from monai.utils import optional_import

ProgressBar, _has_ignite = optional_import("ignite.handlers", name="ProgressBar")
Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["TqdmProgressBar"]


class TqdmProgressBar:
    """A tqdm progress bar over the iterations of an epoch, showing the running loss.

    MONAI engines call ``attach(engine)`` on every handler; ignite's ``ProgressBar`` needs an
    ``output_transform`` to show the loss, which this class supplies.

    Args:
        output_key: key of the loss in the engine output (MONAI trainers store it under "loss").
        persist: keep the finished bar on screen.
    """

    def __init__(self, output_key: str = "loss", persist: bool = False) -> None:
        self.output_key = output_key
        self.persist = persist

    def _loss(self, output: Any) -> dict[str, float]:
        if isinstance(output, list):  # MONAI decollates engine outputs
            output = output[0]
        if isinstance(output, dict) and self.output_key in output:
            return {self.output_key: float(output[self.output_key])}
        return {}

    def attach(self, engine: Engine) -> None:
        ProgressBar(persist=self.persist).attach(engine, output_transform=self._loss)

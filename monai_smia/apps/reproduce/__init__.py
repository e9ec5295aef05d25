"""``monai-smia reproduce``: the claims of the SMIA paper settled on this project's victims with paired statistics.

Modules: :mod:`~monai_smia.apps.reproduce.workflow` (the run), ``data`` (cases per bundle), ``plan``
(conditions and claims per bundle) and ``run`` (one condition).
"""

from __future__ import annotations

from monai_smia.apps.reproduce.workflow import BUNDLE_EPS, ReproduceSettings, reproduce_from_config, run_reproduce

__all__ = ["BUNDLE_EPS", "ReproduceSettings", "reproduce_from_config", "run_reproduce"]

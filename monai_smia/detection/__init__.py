"""Deprecated alias of :mod:`monai_smia.apps.detection`, kept for one release.

Bundle configs written for earlier versions name ``_target_`` paths such as
``monai_smia.detection.engine.DetectionAttackInferer``; importing this package (or one of its former
submodules) warns with a ``FutureWarning`` and resolves to the same objects under ``monai_smia.apps.detection``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from monai_smia.apps.detection import *  # noqa: F401,F403
from monai_smia.apps.detection import __all__  # noqa: F401

warnings.warn(
    "monai_smia.detection is deprecated and will be removed in the next release; use monai_smia.apps.detection",
    FutureWarning,
    stacklevel=2,
)

#: the old submodules, each an alias of its new module (``import monai_smia.detection.engine`` still works)
SUBMODULES = ("attack", "data", "engine", "inference", "metrics", "network", "training")

for _name in SUBMODULES:
    _module = importlib.import_module(f"monai_smia.apps.detection.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module

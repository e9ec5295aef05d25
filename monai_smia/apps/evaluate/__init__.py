"""``monai-smia evaluate``: a bundle's network clean and attacked, with MONAI metrics side by side.

Modules: :mod:`~monai_smia.apps.evaluate.evaluation` (the run over conditions), ``config`` (the evaluator
config of one condition), ``source`` (source-grid attacks inside the evaluator) and ``reports``.
"""

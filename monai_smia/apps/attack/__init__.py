"""``monai-smia attack``: adversarial copies of CT volumes, DICOM series and images, written on the
source grid (or the network grid) with their survival through the written file measured.

Modules: :mod:`~monai_smia.apps.attack.run` (the workflow and its writer), ``cases`` (input discovery),
``grids`` (network- and source-grid attacks), ``source`` (the bundle's preprocessing inside the attack),
``outputs`` (writing NIfTI, DICOM, PNG) and ``survival`` (read-back and per-case records).
"""

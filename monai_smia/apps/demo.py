"""``monai-smia demo``: evaluate the lung CT bundle (and the fundus bundle) on real data against
random noise, FGSM, PGD, DEV and SMIA, print the tables and name the figures.

Data, in order of preference:

1. ``--data-dir`` / ``MONAI_SMIA_DATA``: a folder of raw data laid out like ``../shared/data``; the
   demo runs data_prep on it into a cache (once; later runs reuse it).
2. On a machine with a network: the public sample (TotalSegmentator's example CTs, RetinaMNIST from
   MedMNIST) is downloaded once into the cache.
3. Otherwise: the synthetic CT phantom of :mod:`monai_smia.apps.data_prep.phantom`, announced as synthetic
   everywhere (console, report title, provenance).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monai_smia.io.cache import default_cache, source_key
from monai_smia.io.datalist import load_datalist
from monai_smia.io.paths import check_folder

__all__ = ["DEMO_BUNDLES", "prepare_demo_data", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_BUNDLES = ("lung_ct_seg", "retina_dr_cls")
#: the demo evaluates the first test volumes only, to finish in minutes on 2 CPU cores (the evaluate command runs all)
DEMO_MAX_CASES = {"lung_ct_seg": 2, "lung_ct_seg3d": 2}
TOTALSEG_URL = "https://github.com/wasserth/TotalSegmentator/raw/master/tests/reference_files/"
TOTALSEG_SAMPLE = (
    "example_ct.nii.gz",
    "example_seg_v1.nii.gz",
    "example_ct_sm.nii.gz",
    "example_seg.nii.gz",
    "pulm_ct_cropped.nii.gz",
)


def _download_lung_sample(cache: Path) -> Path:
    """TotalSegmentator's example CTs into ``cache/raw`` (laid out like ../shared/data)."""
    from monai.apps.utils import download_url

    raw = cache / "raw"
    for name in TOTALSEG_SAMPLE:
        target = raw / "ct" / "totalsegmentator" / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            download_url(TOTALSEG_URL + name, str(target), progress=False)  # temporary file, then rename
    return raw


def prepare_demo_data(bundle: str, data_dir: str | os.PathLike | None, cache: str | os.PathLike) -> tuple[Path, str]:
    """A data_prep folder for ``bundle`` and a sentence saying where its data came from."""

    cache = Path(cache)
    raw = Path(data_dir) if data_dir else None
    if bundle in ("lung_ct_seg", "lung_ct_seg3d"):
        from monai_smia.apps.data_prep import lung_ct, phantom

        if raw is not None and (raw / "ct").is_dir():
            out = cache / f"lung_ct_{source_key(raw)}"
            lung_ct.prepare(raw, out)
            return out, f"real chest/abdomen CT from {raw} (monai_smia.apps.data_prep.lung_ct)"
        if raw is not None:
            raise FileNotFoundError(
                f"{raw} has no ct/ folder: point --data-dir at a folder laid out like ../shared/data"
            )
        try:
            sample = _download_lung_sample(cache)
            out = cache / "lung_ct_public_sample"
            lung_ct.prepare(sample, out)
            return out, "public sample: TotalSegmentator example CTs, downloaded once into the cache"
        except Exception as err:  # offline, blocked or changed upstream: say so and use the phantom
            logger.warning("no real CT available (%s); falling back to the synthetic phantom", err)
            out = cache / "lung_ct_synthetic_phantom"
            if not (out / "datalist.json").is_file():
                phantom.prepare(out)
            return out, "SYNTHETIC CT phantom (no real data folder and no network): numbers say nothing about real CT"
    if bundle == "retina_dr_cls":
        if raw is not None and (raw / "fundus" / "retinamnist.npz").is_file():
            from monai_smia.apps.data_prep.medmnist import prepare_medmnist

            out = cache / f"retinamnist_{source_key(raw)}"
            prepare_medmnist(raw, out, "retinamnist")
            return out, f"RetinaMNIST from {raw / 'fundus' / 'retinamnist.npz'}"
        from monai_smia.apps.data_prep.download import prepare_dataset

        out = cache / "retinamnist_public"
        if not (out / "datalist.json").is_file():
            prepare_dataset("retinamnist", out, cache=cache / "downloads")
        return out, "RetinaMNIST (MedMNIST v2), downloaded once into the cache"
    raise ValueError(f"the demo knows bundles {', '.join(DEMO_BUNDLES)} and lung_ct_seg3d, not {bundle!r}")


def run_demo(
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "monai_smia_demo",
    cache: str | os.PathLike | None = None,
    bundles: tuple[str, ...] = DEMO_BUNDLES,
    max_cases: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate each bundle on its demo data; print and return ``{bundle: summary}``."""
    from monai_smia.apps.evaluate.evaluation import evaluation_from_bundle

    cache = check_folder(cache if cache is not None else default_cache(), "cache (--cache)", may_be_missing=True)
    if data_dir is not None:  # an explicit folder that is not there is refused, never replaced by a download
        check_folder(data_dir, "data_dir (--data-dir)", "point it at a folder laid out like the data folder")
    out = Path(output_dir)
    results: dict[str, Any] = {}
    for bundle in bundles:
        try:
            dataset_dir, source = prepare_demo_data(bundle, data_dir, cache)
        except Exception as err:  # a second bundle's data missing must not hide the first one's results
            if bundle == bundles[0]:
                raise
            print(f"\n[{bundle}] skipped: {err}")
            continue
        n = len(load_datalist(dataset_dir, "test"))
        limit = max_cases if max_cases is not None else DEMO_MAX_CASES.get(bundle)
        shown = n if limit is None else min(n, limit)
        more = "" if shown == n else f" (first {shown} of {n}; `monai-smia evaluate` runs them all)"
        print(f"\n[{bundle}] data: {source}; {shown} test cases{more}")
        evaluation = evaluation_from_bundle(
            bundle, dataset_dir=str(dataset_dir), output_dir=str(out / bundle), max_cases=limit, device=device
        )
        results[bundle] = evaluation.run()
        figures = sorted(p.name for p in (out / bundle).glob("*.png"))
        print(
            f"[{bundle}] reports in {out / bundle}: summary.md, summary.json, per_case.csv, provenance.json; figures: "
            f"{', '.join(figures)}"
        )
    return results

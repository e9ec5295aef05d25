"""Source-grid attacks inside a robustness evaluation (``monai-smia evaluate --grid source``).

The evaluator config of one condition (:mod:`monai_smia.apps.evaluate.wiring`) gets three entries
changed when ``grid == "source"`` (:func:`source_grid_overrides`):

- the dataset's transform :class:`WithSource` keeps the image as the bundle's loading transforms give
  it (``LoadImaged``, ``EnsureChannelFirstd``: the file's grid and units, e.g. HU) under ``"source"``,
  beside the preprocessed batch;
- ``PrepareBatchExtraInput`` hands ``source`` (and the labels) to the inferer;
- :class:`SourceGridAttackInferer` attacks every case on its source voxels through the bundle's
  preprocessing (:func:`monai_smia.apps.attack.grids.source_grid_case`, the same attack, lattice,
  budget and random start as ``monai-smia attack --grid source``) and returns the network's output
  on ``preprocessing(x_adv)``.

The record and metric handlers work unchanged: ``image_adv`` is the preprocessed adversarial source
(PSNR/SSIM compare network inputs, as on the network grid), and the inferer adds to each case record
``grid: "source"`` and the perturbation statistics (``linf``, ``l2``, ``var``) measured on the source
grid, in the user's eps unit (:attr:`SourceGridAttackInferer.last_record_extras`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import ensure_tuple

from monai_smia.apps.attack.cases import SourceCase
from monai_smia.apps.attack.grids import Applied, predict, source_grid_case
from monai_smia.apps.attack.plan import CaseAttack
from monai_smia.inferers import AttackingInferer, AttackOutput
from monai_smia.io.units import source_intensity_scale
from monai_smia.losses import hard_prediction
from monai_smia.metrics.perturbation import perturbation_statistics
from monai_smia.transforms.differentiable import split_preprocessing

__all__ = ["SOURCE_KEY", "SourceGridAttackInferer", "WithSource", "source_grid_overrides"]

#: batch key of the loaded source image
SOURCE_KEY = "source"


class WithSource:
    """A dataset transform: ``preprocessing(item)`` plus, under ``source_key``, the image as the
    preprocessing's loading transforms give it (channel-first, source grid and units).

    Args:
        preprocessing: the bundle's preprocessing (starting with ``LoadImaged``;
            :func:`~monai_smia.transforms.differentiable.split_preprocessing` checks it).
        image_key: the image's key in the item.
        source_key: where the loaded source goes.
    """

    def __init__(self, preprocessing: Any, image_key: str = "image", source_key: str = SOURCE_KEY) -> None:
        self.preprocessing = preprocessing
        self.loading, _ = split_preprocessing(preprocessing, image_key)
        self.image_key, self.source_key = image_key, source_key

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        src: dict[str, Any] = {self.image_key: item[self.image_key]}
        for t in self.loading:
            with allow_missing_keys_mode(t):
                src = t(src)
        out = dict(self.preprocessing(item))
        out[self.source_key] = src[self.image_key]
        return out


def _source_case(path: str) -> SourceCase:
    p = Path(path)
    name = p.name.lower()
    kind = "dicom" if p.is_dir() else "png" if name.endswith(".png") else "nifti"
    return SourceCase(case_id=p.name.split(".")[0], source=p, kind=kind)


class SourceGridAttackInferer(AttackingInferer):
    """Attack each case on its source grid, then return the network's output on ``preprocessing(x_adv)``.

    SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232) and its baselines
    run on the source voxels through the bundle's deterministic preprocessing, as
    ``monai-smia attack --grid source`` does (:func:`monai_smia.apps.attack.grids.source_grid_case`).

    Args:
        attack: attack name (:data:`monai_smia.attacks.registry.ATTACKS`).
        eps: budget in the user's unit (seeds the random start, as ``attack`` does).
        eps_source: the budget in source intensity units (e.g. HU).
        source_to_eps: eps units per source unit (the perturbation statistics of the records).
        preprocessing: the bundle's preprocessing (the part after loading runs inside the attack).
        inferer: the bundle's inferer (slice-wise for a ``SliceInferer``).
        num_iter, alpha, sigma: iterative attack settings (``sigma`` in source voxels, in-plane only
            for a slice-wise network).
        seed: the run seed.
        use_labels: ground-truth mode when labels are given; ``False``: label-free.
        compute_success: label-free: record the share of the output whose prediction changed.

    ``__call__(inputs, network, labels=None, source=None)``: ``source`` is the batch of loaded sources
    (:class:`WithSource`), ``inputs`` the preprocessed batch. After each call :attr:`last_output` is an
    :class:`~monai_smia.inferers.AttackOutput`: ``preprocessing(x_adv)`` per case, the attack's diagnostics,
    the entries each case record gets and (label-free, one case per batch) the clean output, the record
    handler's success reference.
    """

    grid = "source"

    def __init__(
        self,
        attack: str,
        eps: float,
        eps_source: float,
        source_to_eps: float,
        preprocessing: Any,
        inferer: Inferer | None = None,
        num_iter: int = 10,
        alpha: float = 1.0,
        sigma: float = 1.0,
        seed: int = 0,
        use_labels: bool = True,
        compute_success: bool = False,
    ) -> None:
        super().__init__()
        _, rest = split_preprocessing(preprocessing)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        source_scale = source_intensity_scale(preprocessing)
        self.spec = CaseAttack(
            attack=str(attack), eps=float(eps), eps_network=float(eps_source) * source_scale,
            eps_source=float(eps_source), source_scale=source_scale, num_iter=int(num_iter),
            alpha=float(alpha), sigma=float(sigma), bounds=None, seed=int(seed), preprocessing=preprocessing, rest=rest,
        )  # fmt: skip
        self.source_to_eps = float(source_to_eps)
        self.use_labels, self.compute_success = bool(use_labels), bool(compute_success)
        self.last_output: AttackOutput | None = None

    def _extras(self, res: Any, src: torch.Tensor) -> dict[str, Any]:
        d = res.d_src.as_tensor().to(torch.float64)[None]
        x = torch.as_tensor(src).detach().cpu().to(torch.float64)[None]
        stats = perturbation_statistics(x, x + d)
        extras: dict[str, Any] = {"grid": self.grid, "perturbation_grid": "source"}
        extras["linf"] = float(stats["linf"][0]) * self.source_to_eps
        extras["l2"] = float(stats["l2"][0]) * self.source_to_eps
        extras["var"] = float(stats["var"][0]) * self.source_to_eps**2
        return extras | {k: v for k, v in res.record.items() if k in ("source_sigma", "rounded_after_attack")}

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        labels: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Attack every case of the batch on its source grid; returns the output on the attacked inputs."""
        if source is None:
            raise ValueError(
                f"SourceGridAttackInferer needs the loaded source images: add WithSource to the dataset and "
                f"{{'source': {SOURCE_KEY!r}}} to PrepareBatchExtraInput's extra_keys (or evaluate with "
                "grid='network')."
            )
        victim = Applied(network, self.inferer)
        lab_all = labels if self.use_labels else None
        self.last_output = None
        advs, outs, diagnostics, extras, cleans = [], [], [], [], []
        for b in range(inputs.shape[0]):
            src = source[b]
            files = ensure_tuple(src.meta.get("filename_or_obj", "")) if isinstance(src, MetaTensor) else ("",)
            case = _source_case(str(files[0]))
            x = inputs[b : b + 1].as_tensor() if isinstance(inputs, MetaTensor) else inputs[b : b + 1]
            lab = None if lab_all is None else lab_all[b : b + 1]
            res = source_grid_case(self.spec, victim, case, x, lab, src=src.detach().cpu())
            if lab is None and self.compute_success:
                clean = predict(victim, x)
                cleans.append(clean)
                changed = hard_prediction(clean) != hard_prediction(res.logits_adv)
                res.diagnostics["changed_fraction"] = float(changed.float().mean())
            advs.append(res.x_adv.to(inputs.device))
            outs.append(res.logits_adv)
            diagnostics.append(res.diagnostics)
            extras.append(self._extras(res, src))
        # label-free with one case per batch: the very call a record handler would repeat, reused
        clean = cleans[0] if len(cleans) == 1 == inputs.shape[0] else None
        self.last_output = AttackOutput(torch.cat(advs), diagnostics, None, clean, extras)
        return torch.cat(outs)


def source_grid_overrides(section: str = "validate", labels: bool = True) -> dict[str, Any]:
    """The evaluator entries a source-grid condition changes (module docstring)."""
    p = f"{section}#" if section else ""
    clean = f"$@{p}attacker is None"
    extra = {"labels": "label", "source": SOURCE_KEY} if labels else {"source": SOURCE_KEY}
    settings = {
        k: f"$@condition.{k}"
        for k in ("attack", "eps", "eps_source", "source_to_eps", "num_iter", "alpha", "sigma", "seed")
    }
    return {
        f"{p}dataset#transform#transform": {
            "_target_": "monai_smia.apps.evaluate.source.WithSource",
            "preprocessing": f"@{p}preprocessing",
        },
        f"{p}prepare_batch": {"_target_": "PrepareBatchExtraInput", "_disabled_": clean, "extra_keys": extra},
        f"{p}attack_inferer": {
            "_target_": "monai_smia.apps.evaluate.source.SourceGridAttackInferer",
            "_disabled_": clean,
            **settings,
            "preprocessing": f"@{p}preprocessing",
            "inferer": f"@{p}inferer",
            "use_labels": labels,
            "compute_success": not labels,
        },
    }

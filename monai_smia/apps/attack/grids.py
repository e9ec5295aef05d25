"""One case of ``monai-smia attack`` on either grid.

- ``grid="source"`` (default): the perturbation lives on the source voxels in source
  units; the bundle's preprocessing runs inside the attack (:mod:`monai_smia.apps.attack.source`),
  and the written file carries exactly the perturbation that was optimised.
- ``grid="network"`` (for comparison): the attack runs on the network's input
  (:class:`monai_smia.inferers.AttackInferer`), and its perturbation is brought back to the source
  grid with a bilinear ``Invertd`` (:func:`monai_smia.io.invert_perturbation`), converted to source
  units and added to the source; resampling on read-back averages much of it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms.utils import allow_missing_keys_mode

from monai_smia.apps.attack.cases import GRIDS, SourceCase
from monai_smia.apps.attack.outputs import source_lattice
from monai_smia.apps.attack.plan import CaseAttack
from monai_smia.apps.attack.source import (
    SliceWiseNetwork,
    SourceGridNetwork,
    attack_source,
    source_sigma,
)
from monai_smia.attacks.registry import make_attack
from monai_smia.attacks.volume import VolumeAttackResult
from monai_smia.handlers.seeding import case_seed, seed_key
from monai_smia.inferers import AttackInferer
from monai_smia.io import invert_perturbation
from monai_smia.transforms.array import attack_diagnostics
from monai_smia.transforms.differentiable import DifferentiablePreprocessing

__all__ = ["GRIDS", "Applied", "GridResult", "Predictor", "network_grid_case", "predict", "source_grid_case"]


class Predictor(Protocol):
    """A network and the inferer that applies it (a :class:`~monai_smia.bundle.victim.Victim`, or an
    evaluator's network and inferer)."""

    network: torch.nn.Module
    inferer: Any


@dataclass(frozen=True)
class Applied:
    """A :class:`Predictor` made of a network and an inferer (e.g. an evaluator's)."""

    network: torch.nn.Module
    inferer: Any


def predict(victim: Predictor, x: torch.Tensor) -> torch.Tensor:
    """The network's output on the network input ``x`` through the inferer (no gradient), as a plain tensor."""
    with torch.no_grad():
        out = victim.inferer(x, victim.network)
    return out.as_tensor() if isinstance(out, MetaTensor) else out


@dataclass
class GridResult:
    """What one case's attack gives, whichever the grid.

    Attributes:
        logits_adv: the network's output on the attacked input (network grid).
        x_adv: the attacked network input ``(1, C, *spatial)``.
        d_src: the perturbation on the source grid in source units (a ``MetaTensor`` with the source affine).
        diagnostics: the attack's diagnostics (:func:`monai_smia.transforms.array.attack_diagnostics`).
        record: grid-specific entries of the case record.
    """

    logits_adv: torch.Tensor
    x_adv: torch.Tensor
    d_src: MetaTensor
    diagnostics: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


def _seed(spec: CaseAttack, case: SourceCase) -> int:
    return case_seed(spec.seed, spec.attack, spec.eps, [seed_key(case.source)])


def network_grid_case(
    spec: CaseAttack, victim: Predictor, case: SourceCase, data: dict[str, Any], x: torch.Tensor, lab: Any
) -> GridResult:
    """Attack the network input ``x`` and bring the perturbation back to the source grid (bilinear ``Invertd``)."""
    spatial_dims = 2 if isinstance(victim.inferer, SliceInferer) else x.ndim - 2
    s = spec
    attack = make_attack(s.attack, victim.network, s.eps_network, s.num_iter, s.alpha, s.sigma, spatial_dims, s.bounds)
    inferer = AttackInferer(
        attack, victim.inferer, use_labels=lab is not None, compute_success=True, seed=_seed(spec, case)
    )
    with torch.no_grad():
        logits_adv = inferer(x, victim.network, labels=lab)
    logits_adv = logits_adv.as_tensor() if isinstance(logits_adv, MetaTensor) else logits_adv
    result = inferer.last_result
    d_net = result.perturbation[0].detach().cpu()
    d_src = MetaTensor(d_net.double() / spec.source_scale)
    img = data["image"]
    if isinstance(img, MetaTensor) and img.applied_operations:
        d_src = invert_perturbation({"perturbation": d_src, "image": img}, "perturbation", spec.preprocessing)
    diagnostics = inferer.last_diagnostics[0] if inferer.last_diagnostics else {}
    return GridResult(logits_adv, result.adversarial.to(x.device), d_src, diagnostics)


def _load_source(spec: CaseAttack, case: SourceCase) -> MetaTensor:
    """The source as the bundle's loading transforms give it (channel-first, source units)."""
    item: dict[str, Any] = {"image": str(case.source)}
    for t in spec.loading:
        with allow_missing_keys_mode(t):
            item = t(item)
    img = item["image"]
    return img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(img))


def _source_model(
    spec: CaseAttack, victim: Predictor, src: MetaTensor, x: torch.Tensor, scale: float, offset: float
) -> tuple[SourceGridNetwork, int | None]:
    """preprocessing ∘ network (slice by slice for a ``SliceInferer``), and the slice dim."""
    inner, slice_dim = AttackInferer(lambda n: n, victim.inferer).attack_network(x, victim.network)
    if slice_dim is not None:
        batch = int(getattr(victim.inferer, "sw_batch_size", 16))
        inner = SliceWiseNetwork(inner, slice_dim, batch)
    pre = DifferentiablePreprocessing(spec.rest, src.meta)
    return SourceGridNetwork(pre, inner, scale, offset), slice_dim


def source_grid_case(
    spec: CaseAttack, victim: Predictor, case: SourceCase, x: torch.Tensor, lab: Any, src: MetaTensor | None = None
) -> GridResult:
    """Attack the source voxels through the bundle's preprocessing (module docstring); ``src``: the source
    as the loading transforms give it, when the caller has it already (else loaded from ``case.source``)."""
    src = _load_source(spec, case) if src is None else src
    lattice = source_lattice(case)
    u, scale, offset = lattice.variable(src.as_tensor()[None].float().to(x.device))
    model, slice_dim = _source_model(spec, victim, src, x, scale, offset)
    eps_u = lattice.budget(spec.eps_source)
    if not eps_u > 0:
        raise ValueError(
            f"eps = {spec.eps_source:g} source units is below one stored step ({lattice.scale:g}) of "
            f"{str(case.source)!r}; "
            "raise eps or attack on the network grid (--grid network)."
        )
    sigma = source_sigma(spec.sigma, src.affine.numpy(), u.ndim - 2, slice_dim)
    bounds = lattice.bounds(scale, offset)
    attack = make_attack(spec.attack, model, eps_u, spec.num_iter, spec.alpha, sigma, u.ndim - 2, bounds)
    gen = torch.Generator().manual_seed(_seed(spec, case))
    u_adv, rounded = attack_source(attack, u, lab, lattice, gen)
    with torch.no_grad():
        x_adv = model.preprocessing(model.to_source(u_adv))
        logits_adv = predict(victim, x_adv)
    d = (u_adv.double() - u.double()) * scale  # exact: float32 values, float64 difference
    d_src = MetaTensor(d[0].cpu(), affine=src.affine)
    notes = attack.case_notes() if callable(getattr(attack, "case_notes", None)) else []  # WorstCase's winner
    result = VolumeAttackResult(u_adv, u_adv - u, attack.trace, notes=notes)
    diagnostics = attack_diagnostics(attack, result, 0, lab is None, None)
    record = {
        "lattice": {"scale": lattice.scale, "offset": lattice.offset, "dtype": lattice.dtype, "eps_steps": eps_u},
        "source_sigma": sigma,
        "rounded_after_attack": rounded,
    }
    return GridResult(logits_adv, x_adv, d_src, diagnostics, record)

"""An inferer that attacks its input before predicting, for MONAI evaluators.

``AttackInferer`` wraps a MONAI inferer (``SimpleInferer``, ``SliceInferer``, ``SlidingWindowInferer``):
it attacks the batch through that inferer's view of the network, then predicts on the adversarial
batch with the wrapped inferer. MONAI's ``SupervisedEvaluator`` runs inferers under
``torch.no_grad()``; the attack turns gradients back on for itself.

Ground-truth mode (the SMIA paper's setting) needs the labels in the inferer; evaluators pass only
the image, so hand them over with ``PrepareBatchExtraInput({"labels": "label"})``. Without labels
(or with ``use_labels=False``) the attack targets the network's own clean prediction. Attach
:class:`AdversarialImageHandler` to keep the adversarial batch in ``engine.state.output`` for image
metrics (PSNR, SSIM)::

    inferer = AttackInferer(SMIA(net, eps=20.0, bounds=None), SliceInferer(roi_size=(256, 256), spatial_dim=2))
    evaluator = SupervisedEvaluator(device, loader, net, inferer=inferer,
                                    prepare_batch=PrepareBatchExtraInput({"labels": "label"}), ...)
    AdversarialImageHandler(inferer, output_key="image_adv").attach(evaluator)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SliceInferer, SlidingWindowInferer
from monai.utils import ensure_tuple, optional_import

from monai_smia.attacks import Attack
from monai_smia.attacks.volume import VolumeAttackResult, attack_volumes
from monai_smia.sliding_window import windowwise_applies, windowwise_sliding_window
from monai_smia.transforms.array import attack_diagnostics

IterationEvents, _ = optional_import("monai.engines.utils", name="IterationEvents")

__all__ = ["AdversarialImageHandler", "AttackInferer", "AttackOutput", "AttackingInferer", "InfererNetwork"]


@dataclass(frozen=True)
class AttackOutput:
    """What an attacking inferer's last call did to its batch.

    Attributes:
        adversarial: the attacked batch, as the network saw it.
        diagnostics: the attack's diagnostics, one dict per case
            (:func:`~monai_smia.transforms.array.attack_diagnostics`).
        result: the :class:`~monai_smia.attacks.volume.VolumeAttackResult` (``None`` where an inferer has none).
        clean: the clean output, when the inferer predicted it on the way and it is exactly what its wrapped
            inferer gives on the clean batch (a label-free record's reference); else ``None``.
        record_extras: entries each case record gets (one dict per case; e.g. a source-grid attack's).
    """

    adversarial: torch.Tensor
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    result: VolumeAttackResult | None = None
    clean: torch.Tensor | None = None
    record_extras: list[dict[str, Any]] = field(default_factory=list)


class AttackingInferer(Inferer):
    """An inferer that attacks its batch before predicting; :attr:`last_output` is its last call's
    :class:`AttackOutput` (``None`` before the first), and the ``last_*`` properties read it."""

    last_output: AttackOutput | None = None

    @property
    def last_adversarial(self) -> torch.Tensor | None:
        return None if self.last_output is None else self.last_output.adversarial

    @property
    def last_diagnostics(self) -> list[dict[str, Any]]:
        return [] if self.last_output is None else self.last_output.diagnostics

    @property
    def last_result(self) -> VolumeAttackResult | None:
        return None if self.last_output is None else self.last_output.result

    @property
    def last_clean(self) -> torch.Tensor | None:
        return None if self.last_output is None else self.last_output.clean

    @property
    def last_record_extras(self) -> list[dict[str, Any]]:
        return [] if self.last_output is None else self.last_output.record_extras


def _checked_grad_batch_size(grad_batch_size: int | None) -> int | None:
    """``grad_batch_size``, or a one-line ``ValueError`` unless it is an integer >= 1 or ``None``."""
    if grad_batch_size is not None and (
        isinstance(grad_batch_size, bool) or not isinstance(grad_batch_size, int) or grad_batch_size < 1
    ):
        raise ValueError(f"grad_batch_size must be an integer >= 1 or None, got {grad_batch_size!r}.")
    return grad_batch_size


class InfererNetwork(torch.nn.Module):
    """``inferer(x, network)`` as a module, so an attack sees the network the way the inferer runs it
    (e.g. sliding windows with blending); MONAI's inferers let gradients reach the input.

    Through a ``SlidingWindowInferer`` the input gradient is taken window batch by window batch
    (:func:`~monai_smia.sliding_window.windowwise_sliding_window`: the same output and gradient in the
    memory of one window batch) whenever the network's parameters are frozen, as during an attack;
    ``windowwise=False`` differentiates the whole sliding-window call instead; ``grad_batch_size`` windows
    are recomputed at a time (default: the inferer's ``sw_batch_size``).
    """

    def __init__(
        self, inferer: Inferer, network: torch.nn.Module, windowwise: bool = True, grad_batch_size: int | None = None
    ) -> None:
        super().__init__()
        self.inferer = inferer
        self.network = network
        self.windowwise = bool(windowwise)
        self.grad_batch_size = _checked_grad_batch_size(grad_batch_size)

    def forward(self, x: torch.Tensor) -> Any:
        if self.windowwise and windowwise_applies(self.inferer, self.network, x):
            return windowwise_sliding_window(x, self.inferer, self.network, self.grad_batch_size)  # type: ignore[arg-type]
        return self.inferer(x, self.network)


def _covers(roi_size: Any, shape: tuple[int, ...]) -> bool:
    """Whether one window is exactly the slice (then the inferer calls the network on it unchanged);
    a larger roi is padded by the sliding-window inferer, so it is not the bare network."""
    roi = ensure_tuple(roi_size)
    if len(roi) == 1:
        roi = roi * len(shape)
    return all(int(r) <= 0 or int(r) == s for r, s in zip(roi, shape))


class AttackInferer(AttackingInferer):
    """Attack the inputs, then predict on them with ``inferer``.

    Args:
        attack: a :mod:`monai_smia` attack; it is applied to the network the evaluator passes in
            (a shallow copy with that network swapped in when it differs from ``attack.network``).
            A callable ``network -> Attack`` is accepted too.
        inferer: the inferer to attack through and predict with (default ``SimpleInferer()``).
            ``SliceInferer``: the attack runs slice by slice along its ``spatial_dim`` with the 2D
            network (through sliding windows over each slice when ``roi_size`` is smaller than it),
            ``slice_batch_size`` slices per call; the result equals attacking the whole volume
            through the ``SliceInferer``. Other inferers: the attack differentiates through
            ``inferer(x, network)`` on the whole input (use a 3D attack for 3D inputs), window-wise
            through a ``SlidingWindowInferer`` (see ``windowwise``).
        slice_batch_size: slices per network call for ``SliceInferer``; default its ``sw_batch_size``.
        use_labels: use ``labels`` when given (ground-truth mode); ``False``: always label-free.
        compute_success: compute clean/adversarial error rates for :attr:`last_diagnostics` (default,
            as the transforms; one extra forward of each input).
        seed: seed of the CPU generator for random starts (one draw per volume); ``None``: torch's
            global generator.
        windowwise: through sliding windows (a ``SlidingWindowInferer``, or a ``SliceInferer`` whose roi
            is smaller than the slice), take the input gradient window batch by window batch (default:
            memory of one window batch, result equal to the full graph); ``False``: differentiate the whole
            sliding-window call (memory grows with the number of windows).
        grad_batch_size: windows recomputed per batch in the window-wise backward pass (default: the
            inferer's ``sw_batch_size``); lower it to lower the peak memory, the result is the same.

    After each call, :attr:`last_output` is an :class:`AttackOutput`: the adversarial batch, the
    :class:`~monai_smia.attacks.volume.VolumeAttackResult`, one diagnostics dict per volume, and the clean output
    the success computation predicted, equal to ``inferer(x, network)`` on the clean batch, when it is provably
    that (see :meth:`clean_is_inferer_output`; else ``None``), so a label-free record handler needs no extra
    forward for its reference. ``last_adversarial``, ``last_diagnostics``, ``last_result`` and ``last_clean`` read
    it.
    """

    def __init__(
        self,
        attack: Attack | Callable[[torch.nn.Module], Attack],
        inferer: Inferer | None = None,
        slice_batch_size: int | None = None,
        use_labels: bool = True,
        compute_success: bool = True,
        seed: int | None = None,
        windowwise: bool = True,
        grad_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(attack, Attack) and not callable(attack):
            raise TypeError(
                f"attack must be a monai_smia Attack or a callable network -> Attack, got {type(attack).__name__}."
            )
        if inferer is not None and not isinstance(inferer, Inferer):
            raise TypeError(f"inferer must be a MONAI Inferer, got {type(inferer).__name__}.")
        self.attack = attack
        self.inferer = inferer if inferer is not None else SimpleInferer()
        if slice_batch_size is None:
            slice_batch_size = (
                int(getattr(self.inferer, "sw_batch_size", 16)) if isinstance(self.inferer, SliceInferer) else 16
            )
        if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be an integer >= 1, got {slice_batch_size!r}.")
        self.slice_batch_size = slice_batch_size
        self.use_labels = use_labels
        self.compute_success = compute_success
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.windowwise = bool(windowwise)
        self.grad_batch_size = _checked_grad_batch_size(grad_batch_size)
        self._bound: dict[tuple[int, int], Attack] = {}
        self.last_output: AttackOutput | None = None

    def _bind(self, network: torch.nn.Module) -> Attack:
        key = (id(network), id(self.attack))
        if key not in self._bound:
            if isinstance(self.attack, Attack):
                bound = self.attack
                if network is not bound.network:
                    bound = copy.copy(bound)
                    bound.network = network
            else:
                bound = self.attack(network)
                if not isinstance(bound, Attack):
                    raise TypeError(f"the attack factory returned {type(bound).__name__}, not a monai_smia Attack.")
            self._bound = {key: bound}
        return self._bound[key]

    def attack_network(self, inputs: torch.Tensor, network: torch.nn.Module) -> tuple[torch.nn.Module, int | None]:
        """The module the attack differentiates through, and the slice dim (``None``: whole input)."""
        inf = self.inferer
        if isinstance(inf, SliceInferer):
            dim = int(inf.spatial_dim)
            if inputs.ndim != 5 or not 0 <= dim <= 2:
                raise ValueError(
                    f"SliceInferer(spatial_dim={dim}) needs (B, C, H, W, D) inputs, got shape {tuple(inputs.shape)}."
                )
            slice_shape = tuple(s for i, s in enumerate(inputs.shape[2:]) if i != dim)
            if _covers(inf.orig_roi_size, slice_shape):
                return network, dim
            window = SlidingWindowInferer(
                roi_size=inf.orig_roi_size,
                sw_batch_size=inf.sw_batch_size,
                overlap=inf.overlap,
                mode=inf.mode,
                sigma_scale=inf.sigma_scale,
                padding_mode=inf.padding_mode,
                cval=inf.cval,
            )
            return InfererNetwork(window, network, self.windowwise, self.grad_batch_size), dim
        if isinstance(inf, SimpleInferer):
            return network, None
        return InfererNetwork(inf, network, self.windowwise, self.grad_batch_size), None

    def clean_is_inferer_output(self, inputs: torch.Tensor, attack: Attack, attack_net: torch.nn.Module) -> bool:
        """Whether the clean logits of the success computation equal ``inferer(inputs, network)`` bit for bit:
        no autocast, no output picking, and the network run on the batches the inferer runs it on (one volume
        for a whole-input inferer; a ``SliceInferer`` whose roi covers the slices, constant blending, its
        ``sw_batch_size`` slices per call falling as ``slice_batch_size`` slices per volume do)."""
        if not self.compute_success or attack.amp or attack.output_key is not None:
            return False
        inf, num = self.inferer, inputs.shape[0]
        if not isinstance(inf, SliceInferer):
            return num == 1
        if isinstance(attack_net, InfererNetwork) or str(inf.mode) != "constant" or inf.with_coord:
            return False
        per, sw, sbs = inputs.shape[int(inf.spatial_dim) + 2], int(inf.sw_batch_size), self.slice_batch_size
        attack_calls = {(b * per + s, b * per + min(s + sbs, per)) for b in range(num) for s in range(0, per, sbs)}
        return attack_calls == {(i, min(i + sw, num * per)) for i in range(0, num * per, sw)}

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Attack ``inputs`` (with ``labels`` in ground-truth mode), then return ``inferer(x_adv, network)``.

        ``args``/``kwargs`` go to the wrapped inferer's prediction call only.
        """
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"AttackInferer needs a torch.nn.Module network, got {type(network).__name__}.")
        attack_net, slice_dim = self.attack_network(inputs, network)
        attack = self._bind(attack_net)
        lab = labels if self.use_labels else None
        self.last_output = None
        keep = lab is None and self.clean_is_inferer_output(inputs, attack, attack_net)
        result = attack_volumes(
            attack,
            inputs,
            labels=lab,
            slice_dim=slice_dim,
            slice_batch_size=self.slice_batch_size,
            generator=self.generator,
            compute_success=self.compute_success,
            keep_clean=keep,
        )
        clean = result.clean_logits
        # a SliceInferer stitches its windows into a buffer of the inputs' dtype (weights 1: the logits unchanged)
        clean = clean.to(inputs.dtype) if clean is not None and slice_dim is not None else clean
        diagnostics = [attack_diagnostics(attack, result, b, lab is None, slice_dim) for b in range(inputs.shape[0])]
        self.last_output = AttackOutput(result.adversarial, diagnostics, result, clean)
        return self.inferer(result.adversarial, network, *args, **kwargs)


class AdversarialImageHandler:
    """Put the adversarial batch of an attacking inferer into ``engine.state.output[output_key]`` and, with
    ``attack_key``, its whole :class:`AttackOutput` into ``engine.state.output[attack_key]`` (for handlers of
    an evaluator with ``decollate=False``, such as :class:`~monai_smia.handlers.CaseRecordHandler`).

    It runs on ``IterationEvents.FORWARD_COMPLETED``, before MONAI's decollation and
    postprocessing, so per-item outputs carry it too and metrics (``PSNR``, ``SSIM`` handlers with
    ``output_transform=from_engine([output_key, "image"])``) can read it.
    """

    def __init__(self, inferer: AttackingInferer, output_key: str = "image_adv", attack_key: str | None = None) -> None:
        # an AttackingInferer, or another attacking inferer that keeps ``last_adversarial`` (a detector's)
        if not isinstance(inferer, AttackingInferer) and not hasattr(inferer, "last_adversarial"):
            raise TypeError(f"inferer must be an AttackInferer, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.output_key, self.attack_key = output_key, attack_key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if not isinstance(engine.state.output, dict):
            raise TypeError("AdversarialImageHandler expects engine.state.output to be a dict at FORWARD_COMPLETED.")
        if self.inferer.last_adversarial is None:
            raise RuntimeError("the AttackInferer has not run yet; is it the evaluator's inferer?")
        engine.state.output[self.output_key] = self.inferer.last_adversarial
        if self.attack_key is not None:
            engine.state.output[self.attack_key] = getattr(self.inferer, "last_output", None)

"""Base classes that own every guarantee an attack keeps, so no attack can forget one.

Guarantees (docs/design.md, section 2): ``|x_adv - x| <= eps``; ``x_adv`` within ``bounds``;
the network runs in eval mode and its parameters, ``requires_grad`` flags, train/eval mode and
``.grad`` are as they were afterwards; inputs are never modified in place; results do not depend
on how samples are batched; the same seed gives the same result.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
from monai.utils import convert_to_dst_type

from monai_smia.attacks.trace import AttackTrace, TraceRecorder
from monai_smia.losses import deviation_loss, hard_prediction, per_sample_mean, prepare_labels

__all__ = ["Attack", "IterativeAttack", "check_positive", "frozen_network"]


@contextlib.contextmanager
def frozen_network(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``network`` in eval mode with parameters frozen; restore modes, flags and ``.grad`` afterwards."""
    modes = [(m, m.training) for m in network.modules()]
    params = list(network.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    network.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield network
    finally:
        for m, training in modes:
            m.train(training)
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


def check_positive(name: str, value: Any, hint: str = "", allow_zero: bool = False) -> float:
    """``float(value)``, or a one-line ``ValueError`` naming ``name`` unless it is a finite number > 0
    (``>= 0`` with ``allow_zero``); ``hint`` follows the condition in the message (e.g. ``" (voxels)"``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0{hint}, got {value!r}.")
    return float(value)


class Attack:
    """An L-infinity attack on a network mapping ``(B, C, *spatial)`` images to logits.

    Subclasses implement :meth:`perturb`; this class checks arguments and inputs, freezes the
    network, turns gradients on (MONAI evaluators run inferers under ``torch.no_grad()``), and
    applies the budget, the mask and the bounds to whatever :meth:`perturb` returns (as foolbox's
    base class does), so an attack that overshoots still keeps every guarantee.

    Args:
        network: a ``torch.nn.Module`` returning logits ``(B, K)`` or ``(B, K, *spatial)``, or a
            dict/tuple holding them (see ``output_key``).
        eps: L-infinity budget, in the units of the network's input.
        bounds: valid intensity range ``(lo, hi)``; ``None`` disables the clamp.
        loss: deviation loss ``loss(logits, labels)`` returning a scalar or one value per sample;
            default: cross-entropy (K > 1) or BCE with logits (K == 1), mean over pixels.
        output_key: key (dict output) or index (tuple/list output) of the logits.
        targeted: minimise the loss towards ``labels`` (the target) instead of maximising it.
        amp: run the network under ``torch.autocast``; the perturbation stays in float32 or wider.
    """

    #: whether :meth:`perturb` needs labels (``labels=None`` then means the clean prediction)
    uses_labels: bool = True

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        bounds: Sequence[float] | None = (0.0, 1.0),
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        output_key: Any = None,
        targeted: bool = False,
        amp: bool = False,
    ) -> None:
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = network
        self.eps = check_positive("eps", eps)
        if bounds is not None:
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds):
                raise ValueError(f"bounds must be (lo, hi) or None, got {bounds!r}.")
            if not bounds[0] < bounds[1]:
                raise ValueError(f"bounds must satisfy lo < hi, got {tuple(bounds)}.")
            bounds = (float(bounds[0]), float(bounds[1]))
        self.bounds = bounds
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable(logits, labels) or None, got {type(loss).__name__}.")
        self.loss = loss
        self.output_key = output_key
        self.targeted = bool(targeted)
        self.amp = bool(amp)
        self.trace: AttackTrace | None = None

    # ----------------------------------------------------------------- public entry point
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        delta_init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return adversarial images with the shape, dtype, device (and MONAI metadata) of ``images``.

        Args:
            images: ``(B, C, *spatial)`` floating-point images on the network's device.
            labels: class indices, label maps or one-hot; ``None`` attacks the network's own clean
                prediction (the label-free setting of a deployed system). With ``targeted=True``, the target.
            mask: optional, broadcastable to ``images``; the perturbation is zero where it is 0.
            delta_init: starting perturbation for ``random_start`` (drawn here when ``None``).
            generator: random generator for ``random_start``; default: torch's global generator.
        """
        x = self._check_images(images)
        if mask is not None:
            mask = self._check_mask(mask, x)
        if labels is None and self.targeted:
            raise ValueError("targeted=True needs labels: pass the target classes or label map as labels.")
        with frozen_network(self.network), torch.enable_grad():
            if labels is None and self.uses_labels:
                with torch.no_grad():
                    labels = hard_prediction(self.logits(x))
            elif labels is not None and not isinstance(labels, torch.Tensor):
                raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}.")
            delta = self.perturb(x, None if labels is None else labels.detach(), mask, delta_init, generator)
            x_adv = self._apply(x, delta.detach(), mask)
        if self.trace is not None and bool(self.trace.zero_gradient.any()):
            n = int(self.trace.zero_gradient.any(dim=1).sum())
            warnings.warn(
                f"{type(self).__name__}: the input gradient was exactly zero in {n} of {self.trace.num_iter} "
                "iterations for some samples (a sign of gradient masking or saturated outputs); "
                "see attack.trace.zero_gradient.",
                RuntimeWarning,
                stacklevel=2,
            )
        out, *_ = convert_to_dst_type(x_adv.to(images.dtype), images)
        return out

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Return the perturbation ``d`` for clean images ``x``; :meth:`__call__` projects it (budget, mask, bounds)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- building blocks for subclasses
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network (under autocast when ``amp``) and pick the logits out of its output."""
        with torch.autocast(device_type=x.device.type, enabled=self.amp):
            out = self.network(x)
        if isinstance(out, dict):
            key = self.output_key
            if key is None or key not in out:
                raise KeyError(
                    f"network returned a dict with keys {sorted(map(str, out))}; set output_key to one of them."
                )
            out = out[key]
        elif isinstance(out, (tuple, list)):
            out = out[0 if self.output_key is None else self.output_key]
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            raise ValueError(
                f"network logits must be a tensor (B, K[, *spatial]), got {getattr(out, 'shape', type(out))}."
            )
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"network output batch {out.shape[0]} differs from the input batch {x.shape[0]}.")
        return out

    def target(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Check ``labels`` against the first output and bring them into the loss's form (once per call)."""
        if not logits.requires_grad:
            raise ValueError(
                "the network output has no gradient path to its input (detached output, a non-differentiable "
                "layer, or torch.no_grad inside forward): it cannot be attacked with gradients."
            )
        if self.loss is None:
            return prepare_labels(labels, logits)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels have batch size {labels.shape[0]}, the network output has {logits.shape[0]}.")
        return labels.to(logits.device)

    def deviation(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample deviation loss ``(B,)`` (the paper's DEV term) against a :meth:`target`."""
        if self.loss is None:
            return deviation_loss(logits, target)
        value = self.loss(logits, target)
        if value.ndim == 0:
            return value.expand(logits.shape[0])
        if value.shape[0] != logits.shape[0]:
            raise ValueError(
                f"loss returned shape {tuple(value.shape)}; expected a scalar or (B, ...) with B={logits.shape[0]}."
            )
        return per_sample_mean(value)

    def project(self, x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``P(d)``: clip ``d`` to ``[-eps, eps]``, zero it outside ``mask``, clip ``x + d`` into the bounds."""
        delta = delta.clamp(-self.eps, self.eps)
        if mask is not None:
            delta = delta * mask
        if self.bounds is not None:
            delta = (x + delta).clamp(*self.bounds) - x
        return delta

    def initial_delta(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        random_start: bool,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Zero, or uniform in ``[-eps, eps]`` (``delta_init`` when given), projected."""
        if not random_start:
            return torch.zeros_like(x)
        if delta_init is not None:
            delta = self.checked_delta_init(x, delta_init)
        else:
            dev = generator.device if generator is not None else x.device
            delta = (torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype) * 2 - 1) * self.eps
            delta = delta.to(x.device)
        return self.project(x, delta, mask)

    @staticmethod
    def checked_delta_init(x: torch.Tensor, delta_init: torch.Tensor) -> torch.Tensor:
        """``delta_init`` detached onto ``x``'s device and dtype, after checking that the shapes match."""
        if delta_init.shape != x.shape:
            raise ValueError(f"delta_init has shape {tuple(delta_init.shape)}, images have {tuple(x.shape)}.")
        return delta_init.detach().to(device=x.device, dtype=x.dtype)

    # ----------------------------------------------------------------- checks
    def _check_images(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (B, C, *spatial), got {type(images).__name__}.")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point, got {images.dtype}; convert with images.float().")
        if images.ndim < 3:
            raise ValueError(f"images must have shape (B, C, *spatial), got {tuple(images.shape)}.")
        x = images.as_tensor() if hasattr(images, "as_tensor") else images
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or Inf values; clean or mask them before attacking.")
        if self.bounds is not None:
            lo, hi = float(x.min()), float(x.max())
            if lo < self.bounds[0] or hi > self.bounds[1]:
                raise ValueError(
                    f"images span [{lo:g}, {hi:g}], outside bounds={self.bounds}; rescale the images or pass "
                    "bounds that hold them (bounds=None disables the clamp)."
                )
        return x

    @staticmethod
    def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        try:
            shape = torch.broadcast_shapes(tuple(mask.shape), tuple(x.shape))
        except RuntimeError:
            shape = None
        if shape != tuple(x.shape):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to images {tuple(x.shape)}.")
        m = mask.as_tensor() if hasattr(mask, "as_tensor") else mask
        return (m != 0).to(device=x.device, dtype=x.dtype)

    def _apply(self, x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x + d`` clamped into ``[x - eps, x + eps]``, equal to ``x`` outside ``mask``, clamped into the bounds.

        Clamping the image rather than ``d`` leaves an already projected ``x + d`` bit for bit as it is
        (rounding is monotone), so attacks that project at every step give the same result as before.
        """
        x_adv = x + delta
        x_adv = torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps)
        if mask is not None:
            x_adv = torch.where(mask != 0, x_adv, x)
        return x_adv.clamp(*self.bounds) if self.bounds is not None else x_adv

    @property
    def draws_random_start(self) -> bool:
        """Whether a call draws random numbers, so that callers hand it a seeded ``delta_init``."""
        return bool(getattr(self, "random_start", False))

    def __repr__(self) -> str:
        skip = {"network", "loss", "trace"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class IterativeAttack(Attack):
    """Projected sign-gradient ascent on an objective (PGD, Madry et al. 2018); subclasses add terms.

    Args:
        num_iter: number of iterations ``T`` (>= 1).
        step_size: step ``a``; ``None`` means ``2.5 * eps / T`` (Madry et al.).
        random_start: start from uniform noise in ``[-eps, eps]``.
        trace: record the per-iteration diagnostics in :attr:`trace` (about 16 small reductions per iteration);
            ``False`` for runs that report no curves (``attack.trace`` is then ``None`` and the zero-gradient
            warning, which reads it, is not given).
        other args: see :class:`Attack`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 10,
        step_size: float | None = None,
        random_start: bool = False,
        trace: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, **kwargs)
        self.record_trace = bool(trace)
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter must be an integer >= 1, got {num_iter!r}.")
        self.num_iter = num_iter
        self.step_size = 2.5 * self.eps / num_iter if step_size is None else check_positive("step_size", step_size)
        self.random_start = bool(random_start)

    def stabilization(
        self, x: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor, t: int, previous: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Per-sample term subtracted from the objective at iteration ``t``; ``None``: none (PGD).

        Args:
            x: clean images.
            delta: the current perturbation ``d_t``, the tensor the gradient is taken for (detach it
                for a stopped-gradient term).
            logits: ``f(x + d_t)``.
            t: iteration index.
            previous: the perturbation ``d_{t-1}`` before the last update (``d_t - d_{t-1}`` is the
                update applied at ``t - 1``, after projection); ``None`` at ``t = 0``.
        """
        return None

    def stabilization_weight(self) -> float:
        return 0.0

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        delta = self.initial_delta(x, mask, self.random_start, delta_init, generator)
        recorder = TraceRecorder(x.shape[0], x[0].numel(), x.device) if self.record_trace else None
        sign = -1.0 if self.targeted else 1.0
        alpha = self.stabilization_weight()
        target = labels
        previous: torch.Tensor | None = None
        for t in range(self.num_iter):
            delta.requires_grad_(True)
            logits = self.logits(x + delta)
            if t == 0:
                target = self.target(labels, logits)
            dev = self.deviation(logits, target)
            sta = self.stabilization(x, delta, logits, t, previous)
            objective = sign * dev.sum()
            if sta is not None:
                objective = objective - alpha * sta.sum()
            (grad,) = torch.autograd.grad(objective, delta)
            old = delta.detach()
            step = self.step_size * grad.sign()
            delta = self.project(x, old + step, mask)
            if recorder is not None:
                recorder.record(grad, dev, sta, delta, delta - old, step)
            previous = old
        self.trace = None if recorder is None else recorder.finish()
        return delta

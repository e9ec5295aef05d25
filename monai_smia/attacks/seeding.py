"""Per-sample random streams, so that an attack that draws random numbers gives each sample the same
result whatever batch it is in (docs/design.md, section 2: results do not depend on how samples are batched).

Each sample's stream is seeded from a hash of its own starting noise ``delta_init`` (which callers draw
per case from the case's seed) or, without one, of the run's seed (the generator's initial seed, else
torch's) together with the sample's own values. Two calls with the same seed and inputs draw the same numbers.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["sample_generators", "per_sample_uniform"]


def _digest(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def sample_generators(
    x: torch.Tensor, delta_init: torch.Tensor | None, generator: torch.Generator | None
) -> list[torch.Generator]:
    """One CPU generator per sample of ``x``, seeded from that sample alone (module docstring)."""
    if delta_init is not None:
        src, base = delta_init.detach().double().cpu(), b""
    else:
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        src, base = x.detach().double().cpu(), int(seed).to_bytes(8, "little", signed=False)
    return [
        torch.Generator().manual_seed(_digest(base, src[b].contiguous().numpy().tobytes())) for b in range(x.shape[0])
    ]


def per_sample_uniform(generators: list[torch.Generator], x: torch.Tensor, scale: float) -> torch.Tensor:
    """Uniform noise in ``[-scale, scale]`` shaped like ``x``, sample ``b`` drawn from ``generators[b]``."""
    noise = torch.stack([torch.rand(tuple(x.shape[1:]), generator=g, dtype=torch.float64) for g in generators])
    return ((noise * 2 - 1) * scale).to(device=x.device, dtype=x.dtype)

"""Input domains: deterministic image transforms that define how a task sees its inputs.

A domain is a registered function ``f(x, **kwargs) -> x`` on a batch ``(N, C, H, W)`` of floats in
[0, 1]; it returns a batch of the same shape, still in [0, 1]. Transforms are deterministic (the
noise domain draws from a generator seeded by its ``seed`` argument) so a task's inputs are the
same on every machine and in every process.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modelset.registry import Registry

DomainFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class DomainEntry:
    name: str
    fn: DomainFn
    description: str


_DOMAINS: Registry[DomainEntry] = Registry("domain")


def register_domain(name: str) -> Callable[[DomainFn], DomainFn]:
    """Decorator: register ``fn(x, **kwargs)`` as the domain ``name``."""

    def wrap(fn: DomainFn) -> DomainFn:
        _DOMAINS.add(name, DomainEntry(name, fn, (inspect.getdoc(fn) or "").split("\n")[0]))
        return fn

    return wrap


def list_domains() -> list[str]:
    """Names of every registered domain, sorted."""
    return _DOMAINS.names()


def get_domain(name: str) -> DomainEntry:
    """The registry entry of ``name``; unknown names raise ``UnknownNameError``."""
    return _DOMAINS.get(name)


def apply_domain(
    name: str, x: torch.Tensor, kwargs: dict[str, Any] | None = None, chunk: int = 8192
) -> torch.Tensor:
    """Apply domain ``name`` with ``kwargs`` to images ``x`` ``(N, C, H, W)``; same shape out.

    Works in chunks of ``chunk`` images so whole data sets fit in memory.
    """
    entry = get_domain(name)
    kwargs = dict(kwargs or {})
    try:
        inspect.signature(entry.fn).bind(x, **kwargs)
    except TypeError as exc:
        raise TypeError(f"domain {name!r} does not accept {kwargs}: {exc}") from exc
    if x.ndim != 4:
        raise ValueError(f"domain {name!r} expects images (N, C, H, W), got shape {tuple(x.shape)}")
    out = [entry.fn(x[i : i + chunk], **kwargs) for i in range(0, x.shape[0], chunk)]
    return torch.cat(out) if out else x.clone()


@register_domain("identity")
def identity(x: torch.Tensor) -> torch.Tensor:
    """The images as they are."""
    return x.clone()


@register_domain("inverted")
def inverted(x: torch.Tensor) -> torch.Tensor:
    """Photographic negative: 1 - x."""
    return 1.0 - x


@register_domain("rotated")
def rotated(x: torch.Tensor, degrees: float = 90.0) -> torch.Tensor:
    """Rotation by ``degrees`` counter-clockwise about the centre (bilinear, zero fill)."""
    quarter = degrees / 90.0
    if float(quarter).is_integer():  # exact for multiples of 90 degrees
        return torch.rot90(x, int(quarter) % 4, dims=(2, 3)).contiguous()
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@register_domain("blurred")
def blurred(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (reflect padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    # Separable: a horizontal then a vertical 1-D pass, one group per channel.
    kh = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kh, groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kv, groups=c)
    return y.clamp_(0.0, 1.0)


@register_domain("downscaled")
def downscaled(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average-pooled by ``factor`` then upsampled back (nearest): a low-resolution view."""
    h, w = x.shape[2:]
    small = F.adaptive_avg_pool2d(x, (h // factor, w // factor))
    return F.interpolate(small, size=(h, w), mode="nearest")


@register_domain("noisy")
def noisy(x: torch.Tensor, std: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` from a generator seeded with ``seed``, clipped to [0, 1].

    The noise depends only on the seed and the batch shape, so it is the same for the same images
    in the same order; ``apply_domain`` chunks consistently, so whole splits are reproducible.
    """
    gen = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp_(0.0, 1.0)

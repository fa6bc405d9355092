"""Inference-time modules that the reader needs to rebuild the zoo's adapted variants.

- ``NSLConv2d``: Neural Similarity Learning (Liu, Liu, Rehg, Song, NeurIPS 2019). A convolution
  computes the inner product ``wᵀx`` between a filter and each kernel window; NSL generalises it
  to the bilinear similarity ``wᵀ M x`` with a learnable matrix ``M`` over the flattened window
  (``D = in_channels · k · k``), initialised to the identity so training starts from a plain
  convolution. Forms: ``"full"`` (one dense ``M`` per layer), ``"diag"`` (``M = diag(m)``) and
  ``"dynamic"`` (``M(x_p) = I + diag(g(x)_p)`` predicted per output position ``p`` by a small
  convolutional network ``g`` whose last layer starts at zero: the identity residual).
- ``ShapeAdaptor``: Shape Adaptor (Liu et al., ECCV 2020). Mixes a branch resized by ``r1`` with
  one resized by ``r2`` with weights ``1 - σ(α)`` and ``σ(α)``; both are resampled to the output
  size ``round(H · s(α))`` with ``s(α) = r1 + (r2 - r1) σ(α)``, so the network learns where and
  how much to downsample.

State-dict keys: ``NSLConv2d`` keeps ``weight`` and ``bias`` of ``nn.Conv2d`` and adds ``M``
(full, ``(D, D)``), ``m`` (diag, ``(D,)``) or ``meta.0.*``/``meta.2.*`` (dynamic);
``ShapeAdaptor`` has ``alpha`` of shape ``(1,)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NSL_FORMS = ("full", "diag", "dynamic")


class NSLConv2d(nn.Module):
    """Bilinear-similarity convolution: ``(B, in, H, W)`` → ``(B, out, H', W')``.

    ``H' = (H + 2·padding - k) // stride + 1`` as for ``nn.Conv2d``. With ``M = I`` the output is
    exactly that of ``F.conv2d`` with the same ``weight`` and ``bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        form: str = "full",
        hidden: int = 8,
    ) -> None:
        super().__init__()
        if form not in NSL_FORMS:
            raise ValueError(f"NSL form {form!r} is not one of {NSL_FORMS}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.form = kernel_size, stride, padding, form
        self.window = in_channels * kernel_size * kernel_size  # D
        # Same initialisation as nn.Conv2d so NSL at M = I starts where the baseline starts.
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.weight = nn.Parameter(template.weight.detach().clone())
        self.bias = nn.Parameter(template.bias.detach().clone())
        if form == "full":
            self.M = nn.Parameter(torch.eye(self.window))
        elif form == "diag":
            self.m = nn.Parameter(torch.ones(self.window))
        else:
            last = nn.Conv2d(hidden, self.window, 1)
            nn.init.zeros_(last.weight)  # identity residual: M(x) = I at initialisation
            nn.init.zeros_(last.bias)
            self.meta = nn.Sequential(
                nn.Conv2d(in_channels, hidden, kernel_size, stride, padding), nn.ReLU(), last
            )
        self._last_deviation: torch.Tensor | None = None

    def effective_weight(self) -> torch.Tensor:
        """Static forms: the filter ``Mᵀw`` that a plain convolution would use, ``(out, in, k, k)``.

        ``wᵀ M x = (Mᵀ w)ᵀ x``, so static NSL is a convolution with the rows of ``W M``.
        """
        if self.form == "full":
            flat = self.weight.reshape(self.out_channels, self.window)
            return (flat @ self.M).reshape_as(self.weight)
        if self.form == "diag":
            return self.weight * self.m.reshape(1, *self.weight.shape[1:])
        raise ValueError("dynamic NSL has no static effective weight: M depends on the input")

    def identity_deviation(self) -> torch.Tensor:
        """Squared distance of ``M`` from the identity (scalar), the NSL regulariser.

        For the dynamic form it is the mean squared residual ``g(x)`` of the last forward pass.
        """
        if self.form == "full":
            eye = torch.eye(self.window, device=self.M.device, dtype=self.M.dtype)
            return ((self.M - eye) ** 2).sum()
        if self.form == "diag":
            return ((self.m - 1.0) ** 2).sum()
        if self._last_deviation is None:
            return self.weight.new_zeros(())
        return self._last_deviation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form != "dynamic":
            return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)
        batch, _, height, width = x.shape
        k, p, s = self.kernel_size, self.padding, self.stride
        out_h, out_w = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        patches = F.unfold(x, k, padding=p, stride=s)  # (B, D, L)
        residual = self.meta(x).flatten(2)  # (B, D, L): diag(M(x_p)) - 1 per position
        # Keep the regulariser on the graph only while training; at inference it is unused.
        self._last_deviation = (residual**2).sum(1).mean() if self.training else None
        flat = self.weight.reshape(self.out_channels, self.window)
        out = flat @ (patches * (1.0 + residual)) + self.bias.reshape(1, -1, 1)  # (B, out, L)
        return out.reshape(batch, self.out_channels, out_h, out_w)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, form={self.form!r}"
        )


#: Closest σ(α) to 0 or 1 that a saturated start may take (α ≈ ±3.9, still a usable gradient).
SATURATION = 0.02


def shape_adaptor_alpha(
    total_scale: float, n_adaptors: int, r1: float = 0.5, r2: float = 1.0, saturate: bool = False
) -> float:
    """The α that makes ``n_adaptors`` identical shape adaptors resize by ``total_scale`` overall.

    Each adaptor then scales by ``total_scale ** (1 / n)``; e.g. strides (2, 2, 1) spread over
    three adaptors give 0.63 each (α ≈ -1.05). A scale at or beyond the reach of the adaptors
    (strides (2, 2, 2) need every adaptor at exactly r1) raises ``ValueError``, or with
    ``saturate`` starts σ(α) at ``SATURATION`` from the bound: each adaptor then resizes by 0.51,
    and with rounding the maps have the strided network's sizes (28 → 14 → 7 → 4).
    """
    per = total_scale ** (1.0 / n_adaptors)
    sigma = (per - r1) / (r2 - r1)
    if saturate:
        sigma = min(max(sigma, SATURATION), 1.0 - SATURATION)
    if not 0.0 < sigma < 1.0:
        raise ValueError(
            f"overall scale {total_scale} is not reachable with {n_adaptors} adaptors in ({r1}, {r2})"
        )
    return math.log(sigma / (1.0 - sigma))


class ShapeAdaptor(nn.Module):
    """Learnable resizing ``(B, C, H, W)`` → ``(B, C, round(H·s), round(W·s))``, ``s = s(α)``.

    The ``r1`` branch is ``x`` average-pooled to ``r1`` of its size (the human-designed
    downsampling), the ``r2`` branch is ``x`` at ``r2`` of its size; both are resampled bilinearly
    to the output size and mixed by ``1 - σ(α)`` and ``σ(α)``. α receives its gradient through
    the mixing weights (the integer output size itself is not differentiable, as in the paper).
    """

    def __init__(self, alpha_init: float = 0.0, r1: float = 0.5, r2: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < r1 < r2:
            raise ValueError(f"shape adaptor needs 0 < r1 < r2, got r1={r1}, r2={r2}")
        self.r1, self.r2 = r1, r2
        # Shape (1,), not a 0-d scalar: every stored tensor then has at least one dimension.
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))

    def scale(self) -> float:
        """Current resizing factor ``s(α) = r1 + (r2 - r1) σ(α)``."""
        return float(self.r1 + (self.r2 - self.r1) * torch.sigmoid(self.alpha.detach()[0]))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.scale()
        return max(1, round(height * s)), max(1, round(width * s))

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        size = self.output_size(height, width)
        low_size = (max(1, round(height * self.r1)), max(1, round(width * self.r1)))
        low = F.adaptive_avg_pool2d(x, low_size)
        high_size = (max(1, round(height * self.r2)), max(1, round(width * self.r2)))
        high = self._resize(x, high_size)
        gate = torch.sigmoid(self.alpha)
        return (1.0 - gate) * self._resize(low, size) + gate * self._resize(high, size)

    def extra_repr(self) -> str:
        return f"r1={self.r1}, r2={self.r2}, scale={self.scale():.3f}"

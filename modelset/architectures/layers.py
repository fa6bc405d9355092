"""Inference-time modules that the reader needs to rebuild the zoo's adapted variants.

- ``NSLConv2d``: Neural Similarity Learning (Liu, Liu, Rehg, Song, NeurIPS 2019). A convolution
  computes the inner product ``wᵀx`` between a filter and each kernel window; NSL generalises it to
  the bilinear similarity ``wᵀ M x``. As in the authors' code, ``M`` acts on the ``k·k`` spatial
  positions of the window and is shared across input channels (``M ⊗ I_C``), so it has ``k⁴``
  (full) or ``k²`` (diagonal) entries per layer. Forms: ``"full"`` (one learned ``k²×k²`` matrix
  per layer, initialised to ``I``), ``"diag"`` (``M = diag(m)``, ``m`` initialised to ones),
  ``"dynamic_full"`` and ``"dynamic_diag"`` (``M(x_p) = I + g(x)_p`` predicted for each output
  position ``p`` by a two-layer meta-network ``g``: a 3×3 convolution whose output is divided by
  the L2 norm of its input window, ReLU, and a 3×3 convolution to ``k⁴`` or ``k²`` values; their
  weights start at 0.1 and 0.001 of the He-normal scale, so ``M`` starts at the identity).
- ``ShapeAdaptor``: Shape Adaptor (Liu, Lin, Wang, Zhang, Perazzi, Johns, "Shape Adaptor: A
  Learnable Resizing Module", ECCV 2020). Mixes the input max-pooled by 2 (the ``r1 = 0.5``
  branch, the human-designed down-sampling) with the input itself (``r2 = 1``) with weights
  ``1 - σ(α)`` and ``σ(α)``, both resampled bilinearly (corners aligned) to
  ``int(H · s(α))``, ``s(α) = r1 + (r2 - r1) σ(α)``.

State-dict keys: ``NSLConv2d`` keeps ``weight`` and ``bias`` of ``nn.Conv2d`` and adds ``M``
(full, ``(k², k²)``), ``m`` (diag, ``(k²,)``) or ``meta1.*``/``meta2.*`` (dynamic forms);
``ShapeAdaptor`` has ``alpha`` of shape ``(1,)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NSL_FORMS = ("full", "diag", "dynamic_full", "dynamic_diag")


class NSLConv2d(nn.Module):
    """Bilinear-similarity convolution: ``(B, in, H, W)`` → ``(B, out, H', W')``.

    ``H' = (H + 2·padding - k) // stride + 1`` as for ``nn.Conv2d``. With ``M = I`` the output is
    that of ``F.conv2d`` with the same ``weight`` and ``bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        form: str = "full",
        hidden: int = 16,
    ) -> None:
        super().__init__()
        if form not in NSL_FORMS:
            raise ValueError(f"NSL form {form!r} is not one of {NSL_FORMS}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.form = kernel_size, stride, padding, form
        self.positions = kernel_size * kernel_size  # P = k², the size of the spatial M
        # Same initialisation as nn.Conv2d so NSL at M = I starts where the baseline starts.
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.weight = nn.Parameter(template.weight.detach().clone())
        self.bias = nn.Parameter(template.bias.detach().clone())
        if form == "full":
            self.M = nn.Parameter(torch.eye(self.positions))
        elif form == "diag":
            self.m = nn.Parameter(torch.ones(self.positions))
        else:
            n_out = self.positions**2 if form == "dynamic_full" else self.positions
            self.meta1 = nn.Conv2d(in_channels, hidden, kernel_size, stride, padding)
            self.meta2 = nn.Conv2d(hidden, n_out, kernel_size, 1, padding)
            for conv, scale in ((self.meta1, 0.1), (self.meta2, 0.001)):
                fan_in = conv.in_channels * kernel_size * kernel_size
                nn.init.normal_(conv.weight, std=scale * math.sqrt(2.0 / fan_in))
                nn.init.zeros_(conv.bias)

    @property
    def dynamic(self) -> bool:
        return self.form.startswith("dynamic")

    def effective_weight(self) -> torch.Tensor:
        """Static forms: the filter a plain convolution would use, ``(out, in, k, k)``.

        ``wᵀ (M ⊗ I) x`` equals the inner product of ``x`` with the filter whose spatial profile
        (per input channel) is ``Mᵀ w``.
        """
        if self.form == "full":
            flat = self.weight.reshape(-1, self.positions)  # (out·in, P)
            return (flat @ self.M).reshape_as(self.weight)
        if self.form == "diag":
            return self.weight * self.m.reshape(1, 1, self.kernel_size, self.kernel_size)
        raise ValueError("dynamic NSL has no static effective weight: M depends on the input")

    def similarity_residual(self, x: torch.Tensor) -> torch.Tensor:
        """Dynamic forms: ``M(x_p) - I`` per output position, ``(B, P, P, L)`` or ``(B, P, L)``."""
        k, p = self.kernel_size, self.padding
        sq = F.conv2d(x * x, x.new_ones(1, self.in_channels, k, k), None, self.stride, p)
        hidden = torch.relu(self.meta1(x) / torch.sqrt(sq + 1e-4))  # window-normalised, as in NSL
        out = self.meta2(hidden).flatten(2)  # (B, n_out, L)
        if self.form == "dynamic_full":
            return out.reshape(out.shape[0], self.positions, self.positions, -1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic:
            return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)
        batch, channels, height, width = x.shape
        k, p, s = self.kernel_size, self.padding, self.stride
        out_h, out_w = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        patches = F.unfold(x, k, padding=p, stride=s).reshape(batch, channels, self.positions, -1)
        residual = self.similarity_residual(x)
        if self.form == "dynamic_full":  # (M x)_r = x_r + Σ_s R[r, s] x_s per channel and position
            mixed = patches + torch.einsum("brsl,bcsl->bcrl", residual, patches)
        else:
            mixed = patches * (1.0 + residual[:, None])
        flat = self.weight.reshape(self.out_channels, -1)
        out = flat @ mixed.reshape(batch, channels * self.positions, -1) + self.bias.reshape(1, -1, 1)
        return out.reshape(batch, self.out_channels, out_h, out_w)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, form={self.form!r}"
        )


#: ``SA_init``'s floor: σ(α) of an adaptor whose target scale is at or beyond ``r1``.
SATURATION_EPS = 1e-4


def shape_adaptor_alpha(
    input_dim: float, output_dim: float, n_adaptors: int, r1: float = 0.5, r2: float = 1.0
) -> float:
    """The α at which ``n_adaptors`` identical adaptors resize ``input_dim`` to ``output_dim``.

    The authors' initialisation heuristic: each adaptor resizes by
    ``(output_dim / input_dim) ** (1 / n)``; a target the adaptors cannot reach (below ``r1``
    each) starts them at the ``r1`` floor (σ(α) = 1e-4), as the authors' code does. E.g. 28 → 14
    with two adaptors gives 0.707 each (σ(α) ≈ 0.414), the per-adaptor start of the authors'
    CIFAR networks (32 → 8 with four adaptors).
    """
    if input_dim <= 0 or output_dim <= 0 or n_adaptors < 1:
        raise ValueError(f"shape adaptor init needs positive dims and adaptors, got {input_dim}, {output_dim}, {n_adaptors}")
    per = (output_dim / input_dim) ** (1.0 / n_adaptors)
    sigma = min(max((per - r1) / (r2 - r1), 0.0), 1.0) + SATURATION_EPS
    sigma = min(sigma, 1.0 - SATURATION_EPS)
    return math.log(sigma / (1.0 - sigma))


class ShapeAdaptor(nn.Module):
    """Learnable resizing ``(B, C, H, W)`` → ``(B, C, int(H·s), int(W·s))``, ``s = s(α)``.

    The ``r1`` branch is ``x`` max-pooled by 2, the ``r2 = 1`` branch is ``x`` itself; both are
    resampled bilinearly (``align_corners=True``) to the output size and mixed by ``1 - σ(α)``
    and ``σ(α)``. α receives its gradient through the mixing weights; the integer output size
    follows α but is not differentiable, as in the authors' code.
    """

    def __init__(self, alpha_init: float = 0.0, r1: float = 0.5, r2: float = 1.0) -> None:
        super().__init__()
        if (r1, r2) != (0.5, 1.0):
            raise ValueError(f"shape adaptor branches are max-pool by 2 and identity (r1=0.5, r2=1), got r1={r1}, r2={r2}")
        self.r1, self.r2 = r1, r2
        # Shape (1,), not a 0-d scalar: every stored tensor then has at least one dimension.
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))

    def scale(self) -> float:
        """Current resizing factor ``s(α) = r1 + (r2 - r1) σ(α)``."""
        return float(self.r1 + (self.r2 - self.r1) * torch.sigmoid(self.alpha.detach()[0]))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.scale()
        return max(1, int(height * s)), max(1, int(width * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size(*x.shape[-2:])
        low = F.max_pool2d(x, 2, 2) if min(x.shape[-2:]) >= 2 else x
        low = low if tuple(low.shape[-2:]) == size else F.interpolate(low, size=size, mode="bilinear", align_corners=True)
        high = x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        gate = torch.sigmoid(self.alpha)
        return (1.0 - gate) * low + gate * high

    def extra_repr(self) -> str:
        return f"r1={self.r1}, r2={self.r2}, scale={self.scale():.3f}"

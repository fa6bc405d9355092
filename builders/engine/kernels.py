"""The forward pass of ``M`` models of one architecture at once, one kernel per architecture.

:data:`KERNELS` maps an architecture to its stacked kernel; an architecture without one runs
under :class:`VmapKernel` (``torch.func.vmap`` over ``functional_call``: batch-norm running
statistics are stacked buffers, updated per model), so any registered architecture trains. cnn3
has its own (:class:`Cnn3Kernel`): its first convolution is one im2col and batched matmul for all
models (:class:`FirstConv`), the others grouped convolutions (``groups=M``) in channels-last
layout, one oneDNN call per layer for all models.

A kernel is made per stack from the architecture's kwargs (``num_classes`` already the widest of
the stack) and called as ``kernel(params, buffers, x, train)``: ``params`` and ``buffers`` map names
to ``(M, *shape)`` tensors, ``x`` is ``(M, B, C, H, W)``, and the result is logits ``(M, B, K)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from builders.engine.recipe import GLOBAL_RNG_LOCK
from modelset.architectures import build_architecture
from modelset.registry import Registry

#: cnn3 layer options the stacked kernel implements (``modelset.architectures.cnn``).
CNN3_PLAIN_LAYERS = {"conv": "conv", "downsample": "stride", "activation": "relu", "padding": 1}


class StackedKernel:
    """The forward of ``M`` models of ``architecture`` with ``kwargs`` (see the module docstring)."""

    def __init__(self, architecture: str, kwargs: Mapping[str, Any]) -> None:
        self.architecture = architecture
        self.kwargs = dict(kwargs)

    @classmethod
    def check(cls, kwargs: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` (saying why) if the kernel cannot train models with ``kwargs``."""

    def __call__(
        self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool
    ) -> torch.Tensor:
        raise NotImplementedError


#: Stacked kernels by architecture; the others run under :class:`VmapKernel`.
KERNELS: Registry[type[StackedKernel]] = Registry("stacked kernel")


def kernel_for(architecture: str) -> type[StackedKernel]:
    """The stacked kernel class of ``architecture``: its registered one, or :class:`VmapKernel`."""
    return KERNELS.get(architecture) if architecture in KERNELS else VmapKernel


class VmapKernel(StackedKernel):
    """Any architecture: its module run per model under ``torch.func.vmap``."""

    def __init__(self, architecture: str, kwargs: Mapping[str, Any]) -> None:
        super().__init__(architecture, kwargs)
        # vmap needs a template module of the padded shape; "meta" avoids allocating it, and
        # the lock keeps its initialization off another thread's seeded generator.
        with GLOBAL_RNG_LOCK, torch.device("meta"):
            self.template = build_architecture(architecture, self.kwargs)

    def __call__(
        self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool
    ) -> torch.Tensor:
        tmpl = self.template.train(train)

        def one(p: dict, bufs: dict, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(tmpl, (p, bufs), (xb,))

        return vmap(one)(params, buffers, x)


class FirstConv(torch.autograd.Function):
    """The first 3×3 convolution (padding 1) of ``M`` models, each on its own images.

    ``x`` ``(M, B, C, H, W)``, ``weight`` ``(M, O, C, 3, 3)``, ``bias`` ``(M, O)`` → ``(B, M*O,
    Ho, Wo)`` in channels-last layout, the input of the grouped layers that follow. With few
    input channels oneDNN's grouped convolution spent about a fifth of a CPU training step on this
    small layer; an im2col and one batched matmul over all models, written straight into the
    grouped layout, are faster forward and backward.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int
    ) -> torch.Tensor:
        m, b, c, h, w = x.shape
        o = weight.shape[1]
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        padded = F.pad(x, (1, 1, 1, 1))
        span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
        # Rows in the (c, ky, kx) order of the weight, then a row of ones that applies the bias:
        # adding it separately would be one more pass over the layer's largest activation.
        cols = x.new_empty(m, c * 9 + 1, b, ho, wo)
        taps_of = cols[:, :-1].view(m, c, 9, b, ho, wo)
        for ky in range(3):
            for kx in range(3):
                taps = padded[..., ky : ky + span_h : stride, kx : kx + span_w : stride]
                taps_of[:, :, 3 * ky + kx] = taps.transpose(1, 2)
        cols[:, -1] = 1.0
        cols = cols.view(m, c * 9 + 1, b * ho * wo)
        weight_and_bias = torch.cat([weight.reshape(m, o, c * 9), bias.unsqueeze(2)], 2)
        out = torch.empty(b, m * o, ho, wo, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        per_model = out.permute(0, 2, 3, 1).view(b * ho * wo, m, o).transpose(0, 1)  # (M, B*Ho*Wo, O)
        # In place with beta=0 (the empty memory is ignored): one matmul per model straight into
        # the strided view; bmm(out=) into a strided view takes a slow generic path instead.
        per_model.baddbmm_(cols.mT, weight_and_bias.mT, beta=0)
        ctx.save_for_backward(cols)
        ctx.w_shape = weight.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:
        (cols,) = ctx.saved_tensors
        m, o = ctx.w_shape[:2]
        per_model = grad.permute(0, 2, 3, 1).reshape(-1, m, o).transpose(0, 1)  # (M, B*Ho*Wo, O)
        grad_wb = torch.bmm(cols, per_model)  # (M, C*9 + 1, O)
        return None, grad_wb[:, :-1].mT.reshape(ctx.w_shape), grad_wb[:, -1], None


@KERNELS.register("cnn3")
class Cnn3Kernel(StackedKernel):
    """SmallCNN (``modelset.architectures.cnn``) with plain strided convolutions."""

    @classmethod
    def check(cls, kwargs: Mapping[str, Any]) -> None:
        layers = {k: kwargs.get(k, plain) for k, plain in CNN3_PLAIN_LAYERS.items()}
        if layers != CNN3_PLAIN_LAYERS:
            # The kernel is plain strided convolutions; anything else would train silently wrong.
            raise ValueError(
                f"the engine trains cnn3 with plain strided convolutions, not {layers}; NSL and "
                "shape-adaptor models are trained by their variant recipes"
            )

    def __init__(self, architecture: str, kwargs: Mapping[str, Any]) -> None:
        super().__init__(architecture, kwargs)
        self.check(self.kwargs)
        self.strides = list(self.kwargs.get("strides", (2, 2, 1)))

    def __call__(
        self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool
    ) -> torch.Tensor:
        m, b = x.shape[:2]
        strides = self.strides
        h = FirstConv.apply(x, params["conv1.weight"], params["conv1.bias"], strides[0])
        h = torch.relu_(h)  # in place: saves a full-size activation per layer
        # Models side by side along channels: (B, M*C, H, W); groups=M keeps them independent.
        for i, stride in enumerate(strides[1:], start=2):
            w = params[f"conv{i}.weight"]
            bias = params[f"conv{i}.bias"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), stride=stride, padding=1, groups=m)
            h = torch.relu_(h)
        feats = h.mean(dim=(2, 3)).view(b, m, -1).transpose(0, 1)  # (M, B, channels)
        return torch.baddbmm(params["head.bias"].unsqueeze(1), feats, params["head.weight"].mT)

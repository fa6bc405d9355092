"""FLOPs and parameter counts, measured on a forward pass rather than estimated by hand.

``count_flops`` runs one example through the model under ``torch.utils.flop_counter
.FlopCounterMode`` and returns its total: convolutions, matrix products (including the
``W M`` product of static NSL and the unfolded product of dynamic NSL) counted as
2 × multiply-accumulates. Element-wise work (ReLU, bias, pooling, interpolation in shape adaptors)
is not counted, as is usual for FLOPs tables.

``count_sparse_flops`` is the sparsity-aware count: the FLOPs of every ``nn.Conv2d`` and
``nn.Linear`` leaf are scaled by the density (non-zero fraction) of its weight, since a zero weight
skips its multiply-accumulate at every position; everything else is counted dense. For a dense
network both counts are equal.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _counted_forward(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of a single input of shape ``input_shape`` ``(C, H, W)``."""
    return int(_counted_forward(model, input_shape).get_total_flops())


def count_sparse_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs with each conv/linear layer's count scaled by its weight's non-zero fraction."""
    counter = _counted_forward(model, input_shape)
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    total = float(counter.get_total_flops())
    for name, module in model.named_modules():
        if not name or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        dense = float(sum(per_module.get(f"{root}.{name}", {}).values()))
        density = float((module.weight != 0).float().mean())
        total -= dense * (1.0 - density)
    return int(round(total))


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters) of ``model``."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def conv_flops(in_ch: int, out_ch: int, kernel: int, out_h: int, out_w: int) -> int:
    """Closed form for one dense convolution: ``2 · in · k² · out · H' · W'`` (tests use it)."""
    return 2 * in_ch * kernel * kernel * out_ch * out_h * out_w

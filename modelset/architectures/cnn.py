"""The small CNN of the model-zoo literature: three 3×3 convolutions, global average pooling and
a linear head (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights").

With 16 channels, one input channel and ten classes it has 4,970 parameters. State-dict keys are
``conv{i}.weight``, ``conv{i}.bias`` and ``head.weight``, ``head.bias``; variants keep these keys
and add their own (documented where they are defined).

Variants (see ``modelset.architectures.layers``): ``conv="nsl_full" | "nsl_diag" |
"nsl_dynamic_full" | "nsl_dynamic_diag"`` replaces every convolution by an ``NSLConv2d`` of that
form (keys ``conv{i}.M``, ``conv{i}.m`` or ``conv{i}.meta1.*``/``meta2.*`` are added;
``"nsl_dynamic"`` is an alias of ``"nsl_dynamic_diag"``); ``downsample="shape_adaptor"`` makes
every convolution stride 1 and, as in the authors' networks, puts a ``ShapeAdaptor`` ``sa{i}``
after the ReLU of every convolution but the last (keys ``sa{i}.alpha``), α initialised by the
authors' heuristic so that the adaptors together resize by ``sa_output_scale``.
Sparse (STR, GMP) and channel-pruned variants are plain ``cnn3`` models.

``activation`` ("relu", the default, "tanh", "sigmoid" or "selu": the nonlinearities of the Small
CNN Zoo, in Keras' definitions, which torch's match) follows every convolution; ``padding`` is the
zero padding of every convolution (1, the default, keeps odd sizes; the Small CNN Zoo's Keras
"valid" convolutions are ``padding=0``). The defaults build exactly the network of earlier sets.
"""

from __future__ import annotations

import torch
from torch import nn

from modelset.architectures._registry import positive_ints, register_architecture
from modelset.architectures.layers import NSLConv2d, ShapeAdaptor, shape_adaptor_alpha

CONV_KINDS = ("conv", "nsl_full", "nsl_diag", "nsl_dynamic_full", "nsl_dynamic_diag", "nsl_dynamic")
DOWNSAMPLE_KINDS = ("stride", "shape_adaptor")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "selu": torch.selu}


class SmallCNN(nn.Module):
    """Input ``(B, in_channels, H, W)`` → logits ``(B, num_classes)``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, ...] | list[int] = (16, 16, 16),
        strides: tuple[int, ...] | list[int] = (2, 2, 1),
        conv: str = "conv",
        downsample: str = "stride",
        nsl_hidden: int = 16,
        sa_output_scale: float = 0.5,
        activation: str = "relu",
        padding: int = 1,
    ) -> None:
        super().__init__()
        positive_ints("in_channels", in_channels)
        positive_ints("num_classes", num_classes)
        positive_ints("nsl_hidden", nsl_hidden)
        channels, strides = positive_ints("channels", channels), positive_ints("strides", strides)
        if len(channels) > 64:
            raise ValueError(f"cnn3 takes at most 64 layers, got {len(channels)}")
        if len(channels) != len(strides):
            raise ValueError(f"channels {channels} and strides {strides} differ in length")
        if conv not in CONV_KINDS:
            raise ValueError(f"conv {conv!r} is not one of {CONV_KINDS}")
        if downsample not in DOWNSAMPLE_KINDS:
            raise ValueError(f"downsample {downsample!r} is not one of {DOWNSAMPLE_KINDS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {tuple(ACTIVATIONS)}")
        if type(padding) is not int or not 0 <= padding <= 1:
            raise ValueError(f"padding must be 0 or 1, got {padding!r}")
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.depth = len(channels)
        self.adaptive = downsample == "shape_adaptor"
        widths = [in_channels, *channels]
        if self.adaptive:
            alpha = shape_adaptor_alpha(1.0, sa_output_scale, max(1, self.depth - 1))
        for i, stride in enumerate(strides):
            stride = 1 if self.adaptive else stride
            if conv == "conv":
                layer: nn.Module = nn.Conv2d(widths[i], widths[i + 1], 3, stride=stride, padding=padding)
            else:
                form = "dynamic_diag" if conv == "nsl_dynamic" else conv.removeprefix("nsl_")
                layer = NSLConv2d(widths[i], widths[i + 1], 3, stride, padding, form, nsl_hidden)
            setattr(self, f"conv{i + 1}", layer)
            if self.adaptive and i < self.depth - 1:
                setattr(self, f"sa{i}", ShapeAdaptor(alpha))
        self.head = nn.Linear(widths[-1], num_classes)

    def convs(self) -> list[nn.Module]:
        return [getattr(self, f"conv{i + 1}") for i in range(self.depth)]

    def shape_adaptors(self) -> list[ShapeAdaptor]:
        """The shape adaptors in input order (empty unless ``downsample="shape_adaptor"``)."""
        return [getattr(self, f"sa{i}") for i in range(self.depth - 1)] if self.adaptive else []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, channels[-1])``: pooled features before the head."""
        adaptors = self.shape_adaptors()
        for i, conv in enumerate(self.convs()):
            x = self._act(conv(x))
            if i < len(adaptors):
                x = adaptors[i](x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_architecture("cnn3")
def cnn3(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: list[int] = (16, 16, 16),
    strides: list[int] = (2, 2, 1),
    conv: str = "conv",
    downsample: str = "stride",
    nsl_hidden: int = 16,
    sa_output_scale: float = 0.5,
    activation: str = "relu",
    padding: int = 1,
) -> SmallCNN:
    """Small CNN: three 3×3 convolutions (16 channels), global average pooling, linear head.

    ``conv`` and ``downsample`` select the NSL and shape-adaptor variants, ``activation`` and
    ``padding`` the Small CNN Zoo's forms (module docstring).
    """
    return SmallCNN(
        in_channels, num_classes, tuple(channels), tuple(strides), conv, downsample, nsl_hidden,
        sa_output_scale, activation, padding,
    )

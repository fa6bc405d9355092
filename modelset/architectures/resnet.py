"""A narrow timm ResNet for 28×28 grey images: the second family of the zoo.

Built with timm's own ``ResNet`` class (basic blocks, one per stage, four stages) so the
state-dict keys are timm's (``conv1.weight``, ``bn1.*``, ``layer{i}.0.conv{j}.weight``, ...,
``fc.weight``, ``fc.bias``); only the widths are small. With the default widths (8, 12, 16, 24),
one input channel and ten classes it has 25,074 parameters and about 0.2 M multiply-adds per
28×28 image (the 7×7 stride-2 stem and its max-pool bring the map to 7×7 before the stages).
Batch-norm running statistics are buffers, stored with the parameters.
"""

from __future__ import annotations

from torch import nn

from modelset.architectures._registry import positive_ints, register_architecture


@register_architecture("resnet_tiny")
def resnet_tiny(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: list[int] = (8, 12, 16, 24),
    stem_width: int = 8,
) -> nn.Module:
    """Narrow timm ResNet (BasicBlock ×1 per stage, 4 stages) for small grey images."""
    from timm.models.resnet import BasicBlock, ResNet  # timm is heavy: import on first use

    if not isinstance(channels, (list, tuple)) or len(channels) != 4:
        raise ValueError(f"resnet_tiny needs 4 stage widths (timm's ResNet has 4), got {channels!r:.200}")
    channels = positive_ints("channels", [int(c) if isinstance(c, float) and c.is_integer() else c for c in channels], 4)
    positive_ints("in_channels", in_channels)
    positive_ints("num_classes", num_classes)
    positive_ints("stem_width", stem_width)
    return ResNet(
        BasicBlock,
        [1, 1, 1, 1],
        num_classes=num_classes,
        in_chans=in_channels,
        stem_width=stem_width,
        channels=channels,
    )

"""Weight-space augmentations: new weights for (nearly) the same model.

Used by contrastive training (Ren et al. 2020's instance invariance, moved to weight space): two
augmented views of one model must embed close together. All act on a ``WeightSpace`` batch with
per-model randomness from a ``torch.Generator``:

- ``permute``: a random hidden-unit permutation per model (chained layouts; exactly the same
  function, so an invariant encoder must not move at all);
- ``channel_dropout``: zero a fraction of each hidden layer's units (outgoing weights and bias);
- ``prune``: zero the smallest-magnitude fraction of each layer's weights (magnitude pruning);
- ``noise``: add Gaussian noise scaled to each layer's weight RMS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lps.weights import Layer, WeightSpace, permute_hidden


@dataclass(frozen=True)
class Augmentation:
    """Strengths of each augmentation; a value of 0 switches it off."""

    permute: bool = True
    channel_dropout: float = 0.1
    prune: float = 0.3
    noise: float = 0.05


def permute(space: WeightSpace, gen: torch.Generator) -> WeightSpace:
    if not space.chain:
        return space
    b = space.batch_size
    perms = [
        torch.stack([torch.randperm(layer.out_features, generator=gen) for _ in range(b)])
        for layer in space.layers[:-1]
    ]
    return permute_hidden(space, perms)


def channel_dropout(space: WeightSpace, rate: float, gen: torch.Generator) -> WeightSpace:
    """Zero each hidden unit (weights into it and its bias) with probability ``rate``."""

    def drop(i: int, layer: Layer) -> Layer:
        if i == len(space.layers) - 1 or rate <= 0:
            return layer  # the head's outputs are the classes
        keep = (torch.rand(layer.weight.shape[:2], generator=gen) >= rate).to(layer.weight.dtype)
        shape = (*keep.shape, *([1] * (layer.weight.dim() - 2)))
        bias = None if layer.bias is None else layer.bias * keep
        return replace(layer, weight=layer.weight * keep.reshape(shape), bias=bias)

    return space.map_layers(drop)


def prune(space: WeightSpace, fraction: float, gen: torch.Generator) -> WeightSpace:
    """Zero the ``fraction·u`` smallest-magnitude weights of each layer, ``u ~ U(0, 1)`` per model."""
    if fraction <= 0:
        return space

    def cut(_: int, layer: Layer) -> Layer:
        b = layer.weight.shape[0]
        flat = layer.weight.reshape(b, -1)
        amount = (fraction * torch.rand(b, generator=gen) * flat.shape[1]).long()
        ranks = flat.abs().argsort(1).argsort(1)  # rank of each weight by magnitude
        mask = ranks >= amount[:, None]
        return replace(layer, weight=(flat * mask).reshape_as(layer.weight))

    return space.map_layers(cut)


def noise(space: WeightSpace, scale: float, gen: torch.Generator) -> WeightSpace:
    if scale <= 0:
        return space

    def jitter(_: int, layer: Layer) -> Layer:
        b = layer.weight.shape[0]
        rms = layer.weight.reshape(b, -1).pow(2).mean(1).sqrt()
        rms = rms.reshape(b, *([1] * (layer.weight.dim() - 1)))
        w = layer.weight + scale * rms * torch.randn(layer.weight.shape, generator=gen)
        bias = layer.bias
        if bias is not None:
            bias = bias + scale * bias.abs().mean(1, keepdim=True) * torch.randn(bias.shape, generator=gen)
        return replace(layer, weight=w, bias=bias)

    return space.map_layers(jitter)


def augment(space: WeightSpace, config: Augmentation, gen: torch.Generator) -> WeightSpace:
    """All enabled augmentations in turn: permute, channel dropout, prune, noise."""
    if config.permute:
        space = permute(space, gen)
    space = channel_dropout(space, config.channel_dropout, gen)
    space = prune(space, config.prune, gen)
    return noise(space, config.noise, gen)

"""One immutable container for the weights of a batch of models (after nfn's WeightSpaceFeatures).

A :class:`WeightSpace` holds ``B`` models of one architecture signature as an ordered tuple of
:class:`Layer` s (the convolutions and linear maps, in forward order) plus ``extras`` (every other
tensor: shape-adaptor α, NSL matrices, batch-norm buffers, ...). Shape conventions, ``B`` first:

- convolution weight ``(B, out, in, kh, kw)``, linear weight ``(B, out, in)``;
- bias ``(B, out)``, or ``None`` when the layer has none (explicit, never a zero tensor);
- extras ``(B, *shape)`` under their state-dict key.

The layer order comes from the architecture (its layout function or the module tree), never from
the order of a ``state_dict``'s keys. ``chain=True`` says that layer ``l``'s output units are
exactly layer ``l + 1``'s input channels (a plain feed-forward chain such as ``cnn3``): permuting
the hidden units of layer ``l`` then means permuting dim 1 of layer ``l`` (and its bias) and dim 2
of layer ``l + 1`` together, and only chained features may rely on that coupling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

import modelset.architectures.resnet  # noqa: F401  (registers resnet_tiny, a zoo family)
from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.errors import InvalidParametersError
from modelset.shards import check_state_fits, expected_shapes

LayoutFn = Callable[[str, dict[str, Any], Mapping[str, torch.Tensor]], "WeightSpace"]
_LAYOUTS: dict[str, LayoutFn] = {}


@dataclass(frozen=True)
class Layer:
    """One convolution or linear map of ``B`` models.

    ``weight``: ``(B, out, in, kh, kw)`` (conv) or ``(B, out, in)`` (linear); ``bias``: ``(B, out)``
    or ``None``. ``form`` names how the layer computes (``"conv"``, ``"linear"``, or an NSL form
    ``"nsl_full"``, ``"nsl_diag"``, ``"nsl_dynamic"`` whose extra tensors are in the extras).
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    form: str = "conv"

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 5

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[2])


@dataclass(frozen=True)
class WeightSpace:
    """Weights of ``B`` models of one architecture signature (module docstring for shapes)."""

    architecture: str
    arch_kwargs: str  # canonical JSON, as in the model table
    layers: tuple[Layer, ...]
    extras: Mapping[str, torch.Tensor] = field(default_factory=lambda: MappingProxyType({}))
    chain: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "extras", MappingProxyType(dict(self.extras)))
        sizes = {t.shape[0] for t in self.tensors().values()}
        if len(sizes) > 1:
            raise InvalidParametersError(
                f"{self.architecture} weight space: tensors disagree on the batch size, found {sorted(sizes)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.layers[0].weight.shape[0]) if self.layers else 0

    @property
    def kwargs(self) -> dict[str, Any]:
        return decode_kwargs(self.arch_kwargs)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by a stable name (``layer.weight``, ``layer.bias``, extras' keys)."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            out[f"{layer.name}.weight"] = layer.weight
            if layer.bias is not None:
                out[f"{layer.name}.bias"] = layer.bias
        out.update(self.extras)
        return out

    def map_layers(self, fn: Callable[[int, Layer], Layer]) -> WeightSpace:
        """A new weight space with ``fn(index, layer)`` in place of each layer (extras kept)."""
        return replace(self, layers=tuple(fn(i, layer) for i, layer in enumerate(self.layers)))

    def with_extras(self, extras: Mapping[str, torch.Tensor]) -> WeightSpace:
        return replace(self, extras=dict(extras))

    def select(self, index: torch.Tensor | list[int] | slice) -> WeightSpace:
        """The models at ``index`` (a batch index) as a new weight space."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        layers = tuple(
            replace(layer, weight=pick(layer.weight), bias=pick(layer.bias)) for layer in self.layers
        )
        return replace(self, layers=layers, extras={k: v[index] for k, v in self.extras.items()})

    def to(self, dtype: torch.dtype) -> WeightSpace:
        layers = tuple(
            replace(
                layer,
                weight=layer.weight.to(dtype),
                bias=None if layer.bias is None else layer.bias.to(dtype),
            )
            for layer in self.layers
        )
        extras = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.extras.items()}
        return replace(self, layers=layers, extras=extras)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls, architecture: str, arch_kwargs: Mapping[str, Any] | str | None, state: Mapping[str, torch.Tensor]
    ) -> WeightSpace:
        """One model's ``state_dict`` (no batch dim) as a weight space with ``B = 1``."""
        return cls.from_stacked(architecture, arch_kwargs, {k: v.unsqueeze(0) for k, v in state.items()})

    @classmethod
    def from_stacked(
        cls,
        architecture: str,
        arch_kwargs: Mapping[str, Any] | str | None,
        stacked: Mapping[str, torch.Tensor],
    ) -> WeightSpace:
        """``B`` models' tensors stacked on a leading dim (``ModelSet.stacked``) as a weight space.

        Raises ``InvalidParametersError`` naming the tensor when keys or shapes do not fit the
        architecture.
        """
        kwargs_json = canonical_kwargs(arch_kwargs)
        expected = expected_shapes(architecture, kwargs_json)
        per_model = {k: tuple(v.shape[1:]) for k, v in stacked.items()}
        check_state_fits(f"weights per model ({kwargs_json})", per_model, expected, architecture)
        layout = _LAYOUTS.get(architecture, generic_layout)
        return layout(architecture, decode_kwargs(kwargs_json), dict(stacked))


def register_layout(architecture: str) -> Callable[[LayoutFn], LayoutFn]:
    """Decorator: ``fn(architecture, kwargs, stacked) -> WeightSpace`` for one architecture name."""

    def wrap(fn: LayoutFn) -> LayoutFn:
        _LAYOUTS[architecture] = fn
        return fn

    return wrap


@functools.lru_cache(maxsize=64)
def _module_plan(architecture: str, kwargs_json: str) -> tuple[tuple[str, str, str | None], ...]:
    """``(layer name, weight key, folded batch-norm prefix or None)`` in module-definition order."""
    module = build_architecture(architecture, kwargs_json)
    modules = list(module.named_modules())
    plan = []
    for i, (name, sub) in enumerate(modules):
        weight = getattr(sub, "weight", None)
        if not isinstance(sub, (nn.Conv2d, nn.Linear)) or not isinstance(weight, torch.Tensor):
            continue
        norm = None
        # A batch norm defined right after a convolution over the same channels acts on its
        # outputs (timm's conv/bn pairs): folding it keeps features blind to BN reparameterisation.
        if i + 1 < len(modules) and isinstance(modules[i + 1][1], nn.BatchNorm2d):
            bn_name, bn = modules[i + 1]
            if bn.num_features == weight.shape[0]:
                norm = bn_name
        plan.append((name, f"{name}.weight" if name else "weight", norm))
    return tuple(plan)


def generic_layout(
    architecture: str, kwargs: dict[str, Any], stacked: Mapping[str, torch.Tensor]
) -> WeightSpace:
    """Any registered architecture: its ``Conv2d`` and ``Linear`` modules in definition order.

    A ``BatchNorm2d`` defined right after a convolution is folded into it (weight scaled by
    ``γ / sqrt(var + eps)``, bias ``β - γ μ / sqrt(var + eps)``); its tensors stay in the extras.
    ``chain=False``: the layers need not form a feed-forward chain (residual networks do not).
    """
    kwargs_json = canonical_kwargs(kwargs)
    layers = []
    used: set[str] = set()
    for name, wkey, norm in _module_plan(architecture, kwargs_json):
        weight = stacked[wkey]
        prefix = wkey[: -len("weight")]
        bias = stacked.get(f"{prefix}bias")
        used.update({wkey, f"{prefix}bias"})
        if norm is not None and f"{norm}.running_var" in stacked:
            gamma = stacked.get(f"{norm}.weight", torch.ones_like(stacked[f"{norm}.running_var"]))
            beta = stacked.get(f"{norm}.bias", torch.zeros_like(gamma))
            scale = gamma / torch.sqrt(stacked[f"{norm}.running_var"] + 1e-5)
            weight = weight * scale.reshape(*scale.shape, *([1] * (weight.dim() - 2)))
            base = bias if bias is not None else torch.zeros_like(scale)
            bias = beta + scale * (base - stacked[f"{norm}.running_mean"])
        form = "conv" if weight.dim() == 5 else "linear"
        layers.append(Layer(name or "module", weight, bias, form))
    extras = {k: v for k, v in stacked.items() if k not in used}
    return WeightSpace(architecture, kwargs_json, tuple(layers), extras, chain=False)


@register_layout("cnn3")
def cnn3_layout(
    architecture: str, kwargs: dict[str, Any], stacked: Mapping[str, torch.Tensor]
) -> WeightSpace:
    """``cnn3`` and its variants: ``conv1 .. conv{depth}`` then ``head``, a feed-forward chain.

    NSL layers keep their raw ``weight`` here (form ``nsl_*``); ``conv{i}.M`` / ``conv{i}.m`` /
    ``conv{i}.meta1.*``/``meta2.*`` and shape adaptors' ``sa{i}.alpha`` are extras.
    """
    depth = len(kwargs.get("channels", (16, 16, 16)))
    form = str(kwargs.get("conv", "conv"))
    layers = [
        Layer(f"conv{i}", stacked[f"conv{i}.weight"], stacked.get(f"conv{i}.bias"), form)
        for i in range(1, depth + 1)
    ]
    layers.append(Layer("head", stacked["head.weight"], stacked.get("head.bias"), "linear"))
    used = {f"{layer.name}.{p}" for layer in layers for p in ("weight", "bias")}
    extras = {k: v for k, v in stacked.items() if k not in used}
    return WeightSpace(architecture, canonical_kwargs(kwargs), tuple(layers), extras, chain=True)


def permute_hidden(space: WeightSpace, perms: list[torch.Tensor]) -> WeightSpace:
    """Permute hidden units of a chained weight space; the networks compute the same function.

    ``perms[l]`` is ``(out_l,)`` (one permutation for the batch) or ``(B, out_l)`` (one per model)
    for each layer but the last (whose outputs are the classes). NSL extras that read the next
    layer's input channels (dynamic forms' meta-networks) follow them; ``M`` is spatial.
    """
    if not space.chain:
        raise InvalidParametersError(f"{space.architecture}: hidden-unit permutation needs a chained layout")
    if len(perms) != len(space.layers) - 1:
        raise ValueError(f"need {len(space.layers) - 1} permutations, got {len(perms)}")
    batch = space.batch_size
    perms = [p.expand(batch, -1) if p.dim() == 1 else p for p in perms]
    layers = list(space.layers)
    extras = dict(space.extras)
    for i, perm in enumerate(perms):
        cur, nxt = layers[i], layers[i + 1]
        layers[i] = replace(
            cur,
            weight=_take(cur.weight, perm, 1),
            bias=None if cur.bias is None else _take(cur.bias, perm, 1),
        )
        layers[i + 1] = replace(nxt, weight=_take(nxt.weight, perm, 2))
        extras.update(_permute_window_extras(extras, nxt, perm))
    return replace(space, layers=tuple(layers), extras=extras)


def _take(t: torch.Tensor, perm: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with dim ``dim`` reordered by the per-model permutation ``perm`` ``(B, n)``."""
    shape = [perm.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = perm.shape[1]
    index = perm.reshape(shape).expand(*t.shape[:dim], perm.shape[1], *t.shape[dim + 1 :])
    return torch.gather(t, dim, index)


def _permute_window_extras(
    extras: dict[str, torch.Tensor], layer: Layer, perm: torch.Tensor
) -> dict[str, torch.Tensor]:
    """NSL tensors of ``layer`` that read its input channels follow ``perm``.

    NSL's ``M`` (``conv{i}.M``, ``conv{i}.m``) acts on the window's spatial positions and is shared
    across input channels, so it is unchanged; a dynamic form's first meta-convolution reads the
    input channels (dim 2 of ``(B, hidden, in, k, k)``); its second one outputs positions.
    """
    if not layer.is_conv:
        return {}
    key = f"{layer.name}.meta1.weight"
    return {key: _take(extras[key], perm, 2)} if key in extras else {}


def to_state_dicts(space: WeightSpace) -> list[dict[str, torch.Tensor]]:
    """Back to one ``state_dict`` per model (chained layouts only: generic ones fold batch norms)."""
    if not space.chain:
        raise InvalidParametersError(f"{space.architecture}: only chained layouts map back to state dicts")
    flat = space.tensors()
    return [{k: v[b] for k, v in flat.items()} for b in range(space.batch_size)]

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

A batch norm right after a convolution is folded into it by default (``fold_norms=True``: what
LPS features read); ``fold_norms=False`` keeps the stored weights, each such layer naming its norm
in ``Layer.norm``. :func:`load_spaces` reads many models of a set as weight spaces, and
:func:`permute_hidden` is the one hidden-unit permutation (:func:`permute_state_dict` applies it
to a single ``state_dict``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import modelset.architectures.resnet  # noqa: F401  (registers resnet_tiny, a zoo family)
from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.errors import InvalidParametersError
from modelset.registry import Registry
from modelset.shards import check_state_fits, expected_shapes

if TYPE_CHECKING:
    from modelset.reader import ModelSet

LayoutFn = Callable[[str, dict[str, Any], Mapping[str, torch.Tensor]], "WeightSpace"]
_LAYOUTS: Registry[LayoutFn] = Registry("weight layout")


@dataclass(frozen=True)
class Layer:
    """One convolution or linear map of ``B`` models.

    ``weight``: ``(B, out, in, kh, kw)`` (conv) or ``(B, out, in)`` (linear); ``bias``: ``(B, out)``
    or ``None``. ``form`` names how the layer computes (``"conv"``, ``"linear"``, or an NSL form
    ``"nsl_full"``, ``"nsl_diag"``, ``"nsl_dynamic"`` whose extra tensors are in the extras).
    ``norm``: the state-dict prefix of a batch norm acting on the outputs and not yet folded into
    ``weight`` and ``bias`` (its tensors are in the extras), else ``None``.
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    form: str = "conv"
    norm: str | None = None

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

    def fold_norms(self) -> WeightSpace:
        """Each layer's batch norm folded in: weight scaled by ``γ / sqrt(var + eps)``, bias
        ``β - γ μ / sqrt(var + eps)``; the norm's tensors stay in the extras."""

        def fold(_: int, layer: Layer) -> Layer:
            if layer.norm is None:
                return layer
            norm = layer.norm
            extras = self.extras
            gamma = extras.get(f"{norm}.weight", torch.ones_like(extras[f"{norm}.running_var"]))
            beta = extras.get(f"{norm}.bias", torch.zeros_like(gamma))
            scale = gamma / torch.sqrt(extras[f"{norm}.running_var"] + 1e-5)
            weight = layer.weight * scale.reshape(*scale.shape, *([1] * (layer.weight.dim() - 2)))
            base = layer.bias if layer.bias is not None else torch.zeros_like(scale)
            bias = beta + scale * (base - extras[f"{norm}.running_mean"])
            return replace(layer, weight=weight, bias=bias, norm=None)

        return self.map_layers(fold)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        architecture: str,
        arch_kwargs: Mapping[str, Any] | str | None,
        state: Mapping[str, torch.Tensor],
        *,
        fold_norms: bool = True,
    ) -> WeightSpace:
        """One model's ``state_dict`` (no batch dim) as a weight space with ``B = 1``."""
        stacked = {k: v.unsqueeze(0) for k, v in state.items()}
        return cls.from_stacked(architecture, arch_kwargs, stacked, fold_norms=fold_norms)

    @classmethod
    def from_stacked(
        cls,
        architecture: str,
        arch_kwargs: Mapping[str, Any] | str | None,
        stacked: Mapping[str, torch.Tensor],
        *,
        fold_norms: bool = True,
    ) -> WeightSpace:
        """``B`` models' tensors stacked on a leading dim (``ModelSet.stacked``) as a weight space.

        ``fold_norms`` folds each layer's batch norm into it (:meth:`fold_norms`). Raises
        ``InvalidParametersError`` naming the tensor when keys or shapes do not fit the
        architecture.
        """
        kwargs_json = canonical_kwargs(arch_kwargs)
        expected = expected_shapes(architecture, kwargs_json)
        per_model = {k: tuple(v.shape[1:]) for k, v in stacked.items()}
        check_state_fits(f"weights per model ({kwargs_json})", per_model, expected, architecture)
        layout = _LAYOUTS.get(architecture) if architecture in _LAYOUTS else generic_layout
        space = layout(architecture, decode_kwargs(kwargs_json), dict(stacked))
        return space.fold_norms() if fold_norms else space


def register_layout(architecture: str) -> Callable[[LayoutFn], LayoutFn]:
    """Decorator: ``fn(architecture, kwargs, stacked) -> WeightSpace`` for one architecture name."""

    def wrap(fn: LayoutFn) -> LayoutFn:
        _LAYOUTS.add(architecture, fn)
        return fn

    return wrap


@functools.lru_cache(maxsize=64)
def _module_plan(architecture: str, kwargs_json: str) -> tuple[tuple[str, str, str | None], ...]:
    """``(layer name, weight key, folded batch-norm prefix or None)`` in module-definition order."""
    # Building the module draws its initial weights: keep the global RNG as it was, or a caller's
    # seeded run (LPS training) would depend on whether this cache was already warm.
    with torch.random.fork_rng(devices=[]):
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

    A ``BatchNorm2d`` defined right after a convolution is named as the layer's ``norm`` (folded
    by :meth:`WeightSpace.fold_norms`); its tensors stay in the extras. ``chain=False``: the layers need not form a feed-forward chain (residual networks do not).
    """
    kwargs_json = canonical_kwargs(kwargs)
    layers = []
    used: set[str] = set()
    for name, wkey, norm in _module_plan(architecture, kwargs_json):
        weight = stacked[wkey]
        prefix = wkey[: -len("weight")]
        bias = stacked.get(f"{prefix}bias")
        used.update({wkey, f"{prefix}bias"})
        if norm is not None and f"{norm}.running_var" not in stacked:
            norm = None  # a norm without running statistics (never trained in eval form): nothing to fold
        form = "conv" if weight.dim() == 5 else "linear"
        layers.append(Layer(name or "module", weight, bias, form, norm))
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


def random_hidden_perms(space: WeightSpace, generator: torch.Generator) -> list[torch.Tensor]:
    """One random permutation ``(B, out_l)`` per hidden layer of each model, for :func:`permute_hidden`.

    Drawn layer by layer, model by model within a layer, from ``generator``.
    """
    return [
        torch.stack([torch.randperm(layer.out_features, generator=generator) for _ in range(space.batch_size)])
        for layer in space.layers[:-1]
    ]


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


def permute_state_dict(
    architecture: str,
    arch_kwargs: Mapping[str, Any] | str | None,
    state: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One model's ``state_dict`` with its hidden units randomly permuted (:func:`permute_hidden`
    with :func:`random_hidden_perms`): the network computes the same function. Chained layouts
    only; the keys come back in the state's order."""
    space = WeightSpace.from_state_dict(architecture, arch_kwargs, state)
    permuted = to_state_dicts(permute_hidden(space, random_hidden_perms(space, generator)))[0]
    return {k: permuted[k].clone() for k in state}


def load_spaces(
    ms: ModelSet, model_ids: Sequence[str], checkpoint: str = "final", *, fold_norms: bool = True
) -> list[tuple[np.ndarray, WeightSpace]]:
    """``(positions in model_ids, weight space)`` per architecture signature among ``model_ids``,
    read with one :meth:`ModelSet.stacked` call per signature (groups as in ``by_signature``)."""
    return [
        (
            group.positions,
            WeightSpace.from_stacked(
                group.architecture, group.arch_kwargs, ms.stacked(group.ids, checkpoint), fold_norms=fold_norms
            ),
        )
        for group in ms.by_signature(model_ids)
    ]


def one_per_signature(ms: ModelSet, *, fold_norms: bool = True) -> list[WeightSpace]:
    """The first model of each architecture signature of the set, each as a weight space with
    ``B = 1`` (to size features padded to the largest model)."""
    firsts = [group.ids[0] for group in ms.by_signature(ms.metadata.index)]
    return [space for _, space in load_spaces(ms, firsts, fold_norms=fold_norms)]

"""Permutation-invariant second-order features of a model's parameters.

Hidden units can be permuted without changing what a network computes, so LPS compares models
through quantities those permutations leave unchanged, whose sizes do not depend on the channel
counts (so pruned, narrower twins land in the same space as their parents).

**Chained features** (``WeightSpace.chain``, e.g. ``cnn3`` and its variants). Let ``W_l`` be layer
``l``'s effective weight ``(c_l, c_{l-1}, k, k)`` and ``b_l`` its bias. The *chained map*
``C_l`` ``(c_l, d)`` describes each unit of layer ``l`` in a fixed input-side basis of
``d = c_0·k·k + 1`` coordinates (the first layer's input window plus a constant):

- ``C_1 = [W_1 flattened | b_1]``;
- ``Y_{l,p} = W_l[:, :, p] · C_{l-1}`` for each kernel position ``p`` — invariant to the
  permutation of layer ``l-1``'s units, because ``W_l``'s input channels and ``C_{l-1}``'s rows
  move together;
- ``C_l = Σ_p Y_{l,p} + b_l e_dᵀ`` (the affine composition for a constant input patch).

Permuting layer ``l``'s units only permutes the rows of ``Y_l`` and ``C_l``, so their Gram matrices
over units are invariant: ``conv1.gram = C_1ᵀC_1`` ``(d, d)``, ``conv{l}.gram = Y_lᵀY_l``
``(k²d, k²d)`` with ``Y_l = [Y_{l,1} … Y_{l,k²}]``, ``conv{l}.chain = C_lᵀC_l`` ``(d, d)``, and
``head.chain = HᵀH`` ``(d, d)`` with ``H = W_head C_L + b_head e_dᵀ``. Each Gram is divided by its
trace (the log traces go into ``grams.log_trace``) so scales stay comparable. The head's outputs
are classes, which no permutation touches, so ``H`` itself (unit norm, ``classes·d``) is the vector
``head.map``.

**Statistics** (every architecture). Per layer ``{name}.stats``: log norm, moments, fraction of
exact zeros (STR/GMP sparsity), the CDF of ``|w| / rms`` at 0.25, 0.5, 1 and 2, the top singular values of the weight
reshaped to ``(out, in·k·k)`` (invariant to permutations of both sides), bias moments. Variants:
``shape_adaptor`` (σ(α) per adaptor), ``{layer}.nsl_full`` / ``nsl_diag`` / ``nsl_dynamic``
(statistics of NSL's ``M`` that a simultaneous permutation of its rows and columns keeps:
distance from the identity, diagonal moments, the sorted eigenvalues of its symmetric part).
NSL static layers enter the chain through their effective filter ``W M``.

**Generic fallback** (layouts that are not a chain, e.g. the timm ResNet): per-layer statistics,
``stem.gram`` (Gram over the first convolution's units of its flattened filters, batch norm folded)
and ``head.gram`` (the last linear map's Gram over classes ``[W | b][W | b]ᵀ``, blind to the
permutation of its input units).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lps.weights import Layer, WeightSpace

N_SINGULAR = 6  # singular values kept per layer (zero-padded for narrower layers)
N_EIGEN = 4  # eigenvalues of NSL's symmetric M kept at each end of the spectrum
STATS_SIZE = 13 + N_SINGULAR
_TINY = 1e-12


@dataclass(frozen=True)
class Features:
    """Features of ``B`` models: ``matrices`` ``{key: (B, n, n)}`` (symmetric PSD, unit trace) and
    ``vectors`` ``{key: (B, k)}``. Keys not present for an architecture are simply absent."""

    matrices: Mapping[str, torch.Tensor]
    vectors: Mapping[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        first = next(iter({**self.matrices, **self.vectors}.values()))
        return int(first.shape[0])

    def flat(self) -> dict[str, torch.Tensor]:
        return {
            **{f"m:{k}": v for k, v in self.matrices.items()},
            **{f"v:{k}": v for k, v in self.vectors.items()},
        }


def compute_features(space: WeightSpace) -> Features:
    """Invariant features of every model in ``space`` (see the module docstring)."""
    space = space.to(torch.float32)
    matrices: dict[str, torch.Tensor] = {}
    vectors: dict[str, torch.Tensor] = {}
    effective = [_effective_layer(layer, space.extras) for layer in space.layers]
    for layer in effective:
        vectors[f"{layer.name}.stats"] = layer_statistics(layer)
    if space.chain:
        matrices.update(_chained_grams(effective, vectors))
    else:
        matrices.update(_stem_head_grams(effective, vectors))
    vectors.update(_variant_statistics(space))
    return Features(matrices, vectors)


# -- chained second-order features ------------------------------------------------------------
def _chained_grams(layers: Sequence[Layer], vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    first = layers[0]
    batch = first.weight.shape[0]
    chained = _with_bias(first.weight.reshape(batch, first.out_features, -1), first.bias)  # (B, c1, d)
    out[f"{first.name}.gram"] = _gram(chained)
    for layer in layers[1:]:
        if layer.is_conv:
            w = layer.weight.flatten(3)  # (B, c_l, c_{l-1}, P)
            y = torch.einsum("boip,bid->bopd", w, chained)  # (B, c_l, P, d)
            out[f"{layer.name}.gram"] = _gram(y.flatten(2))
            summed = y.sum(2)
        else:
            summed = torch.einsum("boi,bid->bod", layer.weight, chained)
        if layer.bias is not None:
            summed = summed.clone()
            summed[..., -1] += layer.bias
        chained = summed
        out[f"{layer.name}.chain"] = _gram(chained)
    # The last layer's outputs are the classes, which are never permuted: its chained map itself
    # (class × input-window coordinates, unit norm) is invariant and says which class reads what.
    vectors["head.map"] = chained.flatten(1) / chained.flatten(1).norm(dim=1, keepdim=True).clamp_min(_TINY)
    # Gram log traces carry the scale that unit-trace normalisation removes.
    scales = []
    for key in list(out):
        out[key], log_trace = _unit_trace(out[key])
        scales.append(log_trace)
    vectors["grams.log_trace"] = torch.stack(scales, 1)
    return out


def _with_bias(flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[flat | bias]`` ``(B, out, in + 1)``; a missing bias is a zero column."""
    col = bias[..., None] if bias is not None else flat.new_zeros(*flat.shape[:2], 1)
    return torch.cat([flat, col], dim=-1)


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """Gram over units ``rowsᵀ rows``: ``(B, units, n)`` → ``(B, n, n)``."""
    return rows.transpose(1, 2) @ rows


def _unit_trace(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    trace = torch.diagonal(gram, dim1=1, dim2=2).sum(-1).clamp_min(_TINY)
    return gram / trace[:, None, None], torch.log(trace)


# -- generic fallback -------------------------------------------------------------------------
def _stem_head_grams(layers: Sequence[Layer], vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stem, head = layers[0], layers[-1]
    batch = stem.weight.shape[0]
    stem_gram, stem_scale = _unit_trace(
        _gram(_with_bias(stem.weight.reshape(batch, stem.out_features, -1), stem.bias))
    )
    head_rows = _with_bias(head.weight.reshape(batch, head.out_features, -1), head.bias)
    head_gram, head_scale = _unit_trace(head_rows @ head_rows.transpose(1, 2))  # over classes
    vectors["grams.log_trace"] = torch.stack([stem_scale, head_scale], 1)
    return {"stem.gram": stem_gram, "head.gram": head_gram}


# -- statistics ---------------------------------------------------------------------------------
def layer_statistics(layer: Layer) -> torch.Tensor:
    """``(B, STATS_SIZE)`` permutation-invariant statistics of one layer's weight and bias."""
    batch = layer.weight.shape[0]
    w = layer.weight.reshape(batch, -1)
    rms = w.pow(2).mean(1).sqrt().clamp_min(_TINY)
    absw = w.abs() / rms[:, None]
    # The distribution of |w| / rms at fixed points (its CDF): as telling as quantiles, and
    # comparisons are far cheaper than the sort quantiles need.
    quantiles = torch.stack([(absw <= t).float().mean(1) for t in (0.25, 0.5, 1.0, 2.0)], 1)  # (B, 4)
    centred = w - w.mean(1, keepdim=True)
    std = centred.pow(2).mean(1).sqrt().clamp_min(_TINY)
    kurtosis = (centred / std[:, None]).pow(4).mean(1)
    sv = _singular_values(layer.weight.reshape(batch, layer.out_features, -1))
    sv = sv / sv.norm(dim=1, keepdim=True).clamp_min(_TINY)
    top = torch.zeros(batch, N_SINGULAR)
    top[:, : min(N_SINGULAR, sv.shape[1])] = sv[:, :N_SINGULAR]
    if layer.bias is not None:
        b = layer.bias
        bias_stats = torch.stack(
            [
                torch.log(b.pow(2).mean(1).sqrt() + 1e-8),
                b.mean(1) / rms,
                b.std(1, unbiased=False) / rms,
                torch.ones(batch),
            ],
            1,
        )
    else:
        bias_stats = torch.zeros(batch, 4)
    zeros = (w == 0).float().mean(1)
    # Kurtosis is at least 1 for any distribution; a constant (e.g. fully pruned) layer has none.
    head = torch.stack([torch.log(rms), w.mean(1) / rms, std / rms, torch.log(kurtosis.clamp_min(1.0)), zeros], 1)
    return torch.cat([head, quantiles, bias_stats, top], 1)


def _singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values ``(B, min(m, n))`` of ``(B, m, n)``, descending, from the smaller Gram's
    eigenvalues (much faster than an SVD for the short, wide matrices of filters)."""
    small = (
        matrix @ matrix.transpose(1, 2)
        if matrix.shape[1] <= matrix.shape[2]
        else matrix.transpose(1, 2) @ matrix
    )
    eig = torch.linalg.eigvalsh(small.double()).clamp_min(0).sqrt()
    return eig.flip(-1).to(matrix.dtype)


def _variant_statistics(space: WeightSpace) -> dict[str, torch.Tensor]:
    """Shape-adaptor α and NSL statistics (keys absent for models without them)."""
    extras = space.extras
    out: dict[str, torch.Tensor] = {}
    alphas = sorted((k for k in extras if k.startswith("sa") and k.endswith(".alpha")), key=_index_of)
    if alphas:
        sigma = torch.sigmoid(torch.stack([extras[k].reshape(-1) for k in alphas], 1).float())
        # σ(α) per adaptor and the overall resizing 0.5 + 0.5σ multiplied along the network.
        out["shape_adaptor"] = torch.cat([sigma, torch.log(0.5 + 0.5 * sigma).sum(1, keepdim=True)], 1)
    for layer in space.layers:
        name = layer.name
        if f"{name}.M" in extras:
            m = extras[f"{name}.M"].float()
            eye = torch.eye(m.shape[-1])
            diag = torch.diagonal(m, dim1=1, dim2=2)
            off = (m - torch.diag_embed(diag)).abs().sum((1, 2)) / (m.shape[-1] * (m.shape[-1] - 1))
            eig = torch.linalg.eigvalsh(0.5 * (m + m.transpose(1, 2)))  # ascending
            out[f"{name}.nsl_full"] = torch.cat(
                [
                    torch.stack(
                        [
                            (m - eye).pow(2).sum((1, 2)).sqrt() / m.shape[-1] ** 0.5,
                            diag.mean(1),
                            diag.std(1),
                            off,
                        ],
                        1,
                    ),
                    eig[:, :N_EIGEN],
                    eig[:, -N_EIGEN:],
                ],
                1,
            )
        elif f"{name}.m" in extras:
            m = extras[f"{name}.m"].float()
            srt = torch.sort(m, dim=1).values
            out[f"{name}.nsl_diag"] = torch.cat(
                [
                    torch.stack([(m - 1).pow(2).mean(1).sqrt(), m.mean(1), m.std(1)], 1),
                    srt[:, :N_EIGEN],
                    srt[:, -N_EIGEN:],
                ],
                1,
            )
        elif f"{name}.meta1.weight" in extras:
            keys = [f"{name}.meta{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
            parts = [extras[k].reshape(space.batch_size, -1).float() for k in keys if k in extras]
            out[f"{name}.nsl_dynamic"] = torch.stack(
                [torch.log(p.pow(2).mean(1).sqrt() + 1e-8) for p in parts] + [p.mean(1) for p in parts], 1
            )
    return out


def _index_of(key: str) -> int:
    digits = "".join(ch for ch in key.split(".")[0] if ch.isdigit())
    return int(digits) if digits else 0


def _effective_layer(layer: Layer, extras: Mapping[str, torch.Tensor]) -> Layer:
    """The filter a plain convolution would use: ``W M`` for static NSL (``wᵀMx = (Mᵀw)ᵀx``)."""
    name = layer.name
    if layer.form == "nsl_full" and f"{name}.M" in extras:
        # M acts on the kh·kw window positions, shared across input channels.
        batch, out, cin, kh, kw = layer.weight.shape
        flat = layer.weight.reshape(batch, out * cin, kh * kw) @ extras[f"{name}.M"].to(layer.weight.dtype)
        return Layer(name, flat.reshape(batch, out, cin, kh, kw), layer.bias, "conv")
    if layer.form == "nsl_diag" and f"{name}.m" in extras:
        m = (
            extras[f"{name}.m"]
            .to(layer.weight.dtype)
            .reshape(layer.weight.shape[0], 1, 1, *layer.weight.shape[3:])
        )
        return Layer(name, layer.weight * m, layer.bias, "conv")
    return layer

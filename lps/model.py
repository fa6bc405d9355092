"""The LPS network and the ``LPS`` scorer.

**Network.** For every matrix feature ``G`` ``(n, n)`` (a unit-trace Gram, see ``lps.features``)
a learnable bilinear projection ``X = Pᵀ G P`` ``(m, m)`` is followed by a matrix square root
(Newton–Schulz iterations, as in iSQRT-COV: stable gradients without an eigendecomposition), and
its upper triangle is kept. Vector features are standardised with training-set statistics. The
pieces, each with its presence bit, are concatenated and mapped by an MLP to an embedding; a final
linear map is the learned metric and embeddings are L2-normalised, so the similarity of two models
is the cosine of their embeddings and scoring ``N`` models costs ``N`` embeddings and one matrix
product. For pair training a learnable scale and offset turn the cosine into a logit.

**Saving.** ``LPS.save(dir)`` writes ``lps.safetensors`` (tensors only) and ``lps.json`` (the
configuration and the feature schema); ``LPS.load`` rebuilds the network from them. No pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lps._bank import FeatureBank, bank_from_modelset, bank_from_spaces
from lps.weights import WeightSpace
from modelset._atomic import atomic_paths
from modelset._untrusted import read_json, regular_file
from modelset.errors import ModelSetError

log = logging.getLogger(__name__)

CONFIG_FILE = "lps.json"
TENSORS_FILE = "lps.safetensors"
FORMAT = "lps-v1"


def newton_schulz_sqrt(x: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Square root of SPD matrices ``(B, m, m)`` by coupled Newton–Schulz iterations.

    ``x`` is scaled by its trace so the iteration converges, and the scale restored after.
    """
    batch, m, _ = x.shape
    trace = torch.diagonal(x, dim1=1, dim2=2).sum(-1).clamp_min(1e-12)[:, None, None]
    y = x / trace
    eye = torch.eye(m, dtype=x.dtype, device=x.device).expand(batch, m, m)
    z = eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * trace.sqrt()


class LPSNet(nn.Module):
    """Feature bank ``{key: (B, *shape)}`` + masks → embeddings ``(B, dim)`` of unit norm."""

    def __init__(
        self, schema: Mapping[str, Sequence[int]], dim: int = 64, proj: int = 8, hidden: int = 256
    ) -> None:
        super().__init__()
        self.schema = {k: list(v) for k, v in sorted(schema.items())}
        self.matrix_keys = [k for k in self.schema if k.startswith("m:")]
        self.vector_keys = [k for k in self.schema if k.startswith("v:")]
        self.dim, self.proj, self.hidden = dim, proj, hidden
        self.projections = nn.ParameterList()
        # On the meta device (LPS.load checking shapes) only shapes count: the meta kernels of
        # randn, QR and products import torch's compiler, 1.8 s of a search's start-up.
        meta = torch.empty(0).is_meta
        width = 0
        for key in self.matrix_keys:
            n = self.schema[key][0]
            m = min(proj, n)
            # Orthonormal columns: PᵀGP starts as a compression of G that keeps its spectrum's scale.
            if meta:
                q = torch.empty(n, m)
            else:
                q = torch.linalg.qr(torch.randn(n, m))[0] * math.sqrt(n / m)
            self.projections.append(nn.Parameter(q))
            width += m * (m + 1) // 2 + 1
        vector_width = sum(self.schema[k][0] for k in self.vector_keys)
        width += vector_width + len(self.vector_keys)
        self.register_buffer("vector_mean", torch.zeros(vector_width))
        self.register_buffer("vector_std", torch.ones(vector_width))
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.metric = nn.Linear(hidden, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    def fit_normaliser(self, bank: FeatureBank) -> None:
        """Standardise vector features with the mean and std over the models that have them."""
        means, stds = [], []
        for key in self.vector_keys:
            values, mask = bank.tensors[key], bank.masks[key]
            present = values[mask] if mask.any() else values.new_zeros(1, values.shape[1])
            means.append(present.mean(0))
            stds.append(
                present.std(0, unbiased=False).clamp_min(1e-4)
                if len(present) > 1
                else torch.ones(values.shape[1])
            )
        if means:
            self.vector_mean.copy_(torch.cat(means))
            self.vector_std.copy_(torch.cat(stds))

    def forward(self, bank: FeatureBank) -> torch.Tensor:
        parts = []
        for key, p in zip(self.matrix_keys, self.projections):
            mask = bank.masks[key].float()[:, None]
            g = bank.tensors[key]
            x = p.T @ g @ p
            x = x + 1e-4 * torch.eye(x.shape[-1])
            root = newton_schulz_sqrt(x)
            rows, cols = torch.triu_indices(root.shape[-1], root.shape[-1])
            parts += [root[:, rows, cols] * mask, mask]
        if self.vector_keys:
            vectors = torch.cat([bank.tensors[k] for k in self.vector_keys], 1)
            vectors = ((vectors - self.vector_mean) / self.vector_std).clamp(-10, 10)
            masks = torch.stack([bank.masks[k].float() for k in self.vector_keys], 1)
            widths = [self.schema[k][0] for k in self.vector_keys]
            vectors = vectors * torch.repeat_interleave(masks, torch.tensor(widths), dim=1)
            parts += [vectors, masks]
        h = self.mlp(self.norm(torch.cat(parts, 1)))
        return nn.functional.normalize(self.metric(h), dim=1)

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``(P,)`` that embeddings ``a[i]`` and ``b[i]`` are of the same task."""
        return self.logit_scale.exp() * (a * b).sum(1) + self.logit_bias


#: Sane limits of a saved scorer's configuration (the tensors file bounds it further).
MAX_WIDTH = 1 << 14
MAX_FEATURES = 4096


def _check_config(config: dict[str, Any], path: Path) -> tuple[dict[str, list[int]], tuple[int, int, int]]:
    """``(schema, (dim, proj, hidden))`` of a saved configuration; ``ModelSetError`` names the
    field that is missing, of the wrong type or beyond the limits above."""
    schema = config.get("schema")
    if not isinstance(schema, dict) or len(schema) > MAX_FEATURES:
        raise ModelSetError(f"{path}: 'schema' must be an object of at most {MAX_FEATURES} features")
    for key, shape in schema.items():
        if not key.startswith(("m:", "v:")) or not isinstance(shape, list) or not shape or not all(
            type(n) is int and 1 <= n <= MAX_WIDTH for n in shape
        ):
            raise ModelSetError(
                f"{path}: schema entry {key!r:.80} must be named 'm:...' or 'v:...' with sizes from 1 to "
                f"{MAX_WIDTH}, found {shape!r:.80}"
            )
    sizes = []
    for name in ("dim", "proj", "hidden"):
        value = config.get(name)
        if type(value) is not int or not 1 <= value <= MAX_WIDTH:
            raise ModelSetError(f"{path}: {name!r} must be an integer from 1 to {MAX_WIDTH}, found {value!r:.80}")
        sizes.append(value)
    return {k: list(v) for k, v in schema.items()}, (sizes[0], sizes[1], sizes[2])


class LPS:
    """A trained LPS scorer: embeds models, scores their similarity, saves and loads safely.

    >>> scorer = lps.train(ms, train_tasks=split.train_tasks)
    >>> emb = scorer.embed(["t03-cnn3-base-0007", "t04-cnn3-base-0001"], ms=ms)   # (2, dim)
    >>> scorer.similarity(emb, emb)                                              # (2, 2)
    """

    def __init__(self, net: LPSNet, config: Mapping[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.config = dict(config or {})

    @property
    def dim(self) -> int:
        return self.net.dim

    # -- embedding ------------------------------------------------------------------------
    def embed_bank(self, bank: FeatureBank, batch_size: int = 4096) -> torch.Tensor:
        """Embeddings ``(N, dim)`` of a feature bank (conformed to the network's schema)."""
        bank = bank.conform(self.net.schema)
        with torch.no_grad():
            chunks = [
                self.net(bank.subset(range(s, min(s + batch_size, len(bank)))))
                for s in range(0, len(bank), batch_size)
            ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def embed(
        self,
        models: Sequence[str] | Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor] | str,
        ms=None,
        architecture: str | None = None,
        arch_kwargs: Mapping[str, Any] | str | None = None,
        checkpoint: str = "final",
    ) -> torch.Tensor:
        """Embeddings ``(N, dim)`` of model ids of ``ms``, or of state dicts of ``architecture``.

        ``models`` is one id, a list of ids (with ``ms``), one ``state_dict`` or a list of them
        (with ``architecture`` and ``arch_kwargs``, one signature for all).
        """
        if isinstance(models, str):
            models = [models]
        if isinstance(models, Mapping):
            models = [models]
        models = list(models)
        if not models:
            return torch.zeros(0, self.dim)
        if all(isinstance(m, str) for m in models):
            if ms is None:
                raise ModelSetError("LPS.embed: model ids need the ModelSet they belong to (ms=...)")
            return self.embed_bank(bank_from_modelset(ms, models, checkpoint))
        if architecture is None:
            raise ModelSetError(
                "LPS.embed: state dicts need their architecture (architecture=..., arch_kwargs=...)"
            )
        keys = set(models[0])
        for i, state in enumerate(models):
            if set(state) != keys:
                raise ModelSetError(
                    f"LPS.embed: state dict {i} has keys {sorted(set(state) ^ keys)} that state dict 0 lacks or has"
                )
        stacked = {k: torch.stack([torch.as_tensor(m[k]) for m in models]) for k in keys}
        return self.embed_bank(
            bank_from_spaces([WeightSpace.from_stacked(architecture, arch_kwargs, stacked)])
        )

    def similarity(
        self, a: torch.Tensor | Sequence[str], b: torch.Tensor | Sequence[str] | None = None, ms=None
    ) -> torch.Tensor:
        """Cosine similarity ``(Na, Nb)`` of embeddings (or of model ids of ``ms``), in [-1, 1]."""
        ea = a if isinstance(a, torch.Tensor) else self.embed(a, ms=ms)
        eb = ea if b is None else (b if isinstance(b, torch.Tensor) else self.embed(b, ms=ms))
        return ea @ eb.T

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``lps.safetensors`` and ``lps.json`` into folder ``path`` (atomic renames)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        net = self.net
        config = {
            "format": FORMAT,
            "schema": net.schema,
            "dim": net.dim,
            "proj": net.proj,
            "hidden": net.hidden,
            **{
                k: v for k, v in self.config.items() if k not in {"format", "schema", "dim", "proj", "hidden"}
            },
        }
        tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        with atomic_paths(folder / TENSORS_FILE, folder / CONFIG_FILE) as (tmp_tensors, tmp_config):
            save_file(tensors, str(tmp_tensors), metadata={"format": FORMAT})
            tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> LPS:
        """Load a scorer saved by :meth:`save` (``path``: its folder or either of its files)."""
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        config_path, tensor_path = folder / CONFIG_FILE, folder / TENSORS_FILE
        for p in (config_path, tensor_path):
            if not p.exists():
                raise ModelSetError(
                    f"{p}: missing; an LPS checkpoint folder holds {CONFIG_FILE} and {TENSORS_FILE}"
                )
        config = read_json(config_path, "LPS configuration", ModelSetError)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise ModelSetError(f"{config_path}: format {found!r}, expected {FORMAT!r}")
        schema, sizes = _check_config(config, config_path)
        try:
            regular_file(tensor_path, "LPS tensors")
            # The header alone gives every stored shape: compared with the network the config
            # describes (built on the meta device, no memory), so a config declaring a huge
            # network is refused before anything is allocated.
            with safe_open(str(tensor_path), "pt") as handle:
                stored = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except ModelSetError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise ModelSetError(f"{tensor_path}: cannot be read as safetensors ({exc})") from exc
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in LPSNet(schema, *sizes).state_dict().items()}
        if stored != expected:
            differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            shown = [f"{k}: stored {stored.get(k)}, config implies {expected.get(k)}" for k in differ[:3]]
            raise ModelSetError(
                f"{tensor_path}: tensors do not fit the network in {config_path} ({'; '.join(shown)}); "
                "the two files are from different checkpoints or were changed. Save the scorer again"
            )
        net = LPSNet(schema, *sizes)
        try:
            tensors = load_file(str(tensor_path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelSetError(f"{tensor_path}: cannot be read as safetensors ({exc})") from exc
        bad = [k for k, v in tensors.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
        if bad:
            raise ModelSetError(f"{tensor_path}: tensors {bad[:5]} are not finite floats; the checkpoint is damaged")
        try:
            missing, unexpected = net.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ModelSetError(
                f"{tensor_path}: tensors do not fit the network in {config_path}: {exc}"
            ) from exc
        if missing or unexpected:
            raise ModelSetError(
                f"{tensor_path}: tensors do not fit the network in {config_path}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return cls(net, config)

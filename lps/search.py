"""Nearest zoo models to a user's checkpoint.

The checkpoint is read safely (safetensors, or ``torch.load(weights_only=True)``: tensors and
plain containers only, no code), its architecture is recognised by matching its keys and shapes
against the architecture signatures of the zoo, and its LPS embedding is compared with the zoo's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from lps.model import CONFIG_FILE, LPS
from modelset.errors import InvalidParametersError, ModelSetError
from modelset.shards import expected_shapes

if TYPE_CHECKING:  # sklearn is imported only where a calibration is fit
    from lps.calibration import Calibration

log = logging.getLogger(__name__)


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a ``.safetensors`` file or a weights-only torch checkpoint.

    A dict holding the state dict under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix (DataParallel) removed. Raises ``ModelSetError`` naming the file.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelSetError(f"{file}: no such checkpoint file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(file))
        except Exception as exc:  # safetensors has its own error types
            raise ModelSetError(f"{file}: cannot be read as safetensors ({exc})") from exc
    else:
        _check_torch_archive(file)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, refused globals, truncated files
            raise ModelSetError(
                f"{file}: not a weights-only torch checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                "save it with torch.save(model.state_dict(), path) or as .safetensors"
            ) from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelSetError(
            f"{file}: expected a dict of tensors (a state_dict), found {type(state).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelSetError(f"{file}: entries {bad[:5]} are not tensors; expected a plain state_dict")
    # Refused up front: a NaN or Inf would surface later as a linear-algebra failure.
    odd = [k for k, v in state.items() if v.layout != torch.strided or v.is_complex() or v.is_meta]
    if odd:
        raise InvalidParametersError(f"{file}: tensors {odd[:5]} are sparse, complex or empty placeholders; expected dense real tensors")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise InvalidParametersError(
            f"{file}: tensors {nonfinite[:5]} hold NaN or Inf values; LPS compares finite parameters "
            "only (check the training run that wrote this checkpoint)"
        )
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def _check_torch_archive(file: Path) -> None:
    """A torch zip checkpoint may not declare more bytes than it holds: ``torch.save`` stores its
    entries uncompressed, so a compressed entry (a decompression bomb) is refused before loading."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return  # the legacy format: torch's weights-only loader reads it from the file's own bytes
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelSetError(f"{file}: not a readable torch checkpoint ({exc})") from exc
    size = file.stat().st_size
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed or sum(e.file_size for e in entries) > size:
        raise ModelSetError(
            f"{file}: its entries {packed[:3] or ''} declare more data than the file holds (compressed "
            "entries, which torch.save never writes); save the checkpoint again with torch.save or as .safetensors"
        )


def match_architecture(ms, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, str]:
    """The zoo's ``(architecture, arch_kwargs)`` whose keys and shapes ``state`` has exactly.

    Among several matches the signature with most models wins. Raises ``ModelSetError`` naming
    the closest signature and how ``state`` differs from it.
    """
    found = {k: tuple(v.shape) for k, v in state.items()}
    signatures = ms.architectures().sort_values("models", ascending=False)
    best: tuple[int, str] | None = None
    for arch, kwargs, _ in signatures.itertuples(index=False):
        expected = expected_shapes(str(arch), str(kwargs))
        if expected == found:
            return str(arch), str(kwargs)
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shapes = [
            f"{k}: {list(found[k])} vs {list(expected[k])}"
            for k in sorted(set(found) & set(expected))
            if found[k] != expected[k]
        ]
        cost = len(missing) + len(extra) + len(shapes)
        detail = (
            f"closest is {arch} {kwargs}: missing tensors {missing[:5]}, unexpected tensors {extra[:5]}, "
            f"shape mismatches (found vs expected) {shapes[:5]}"
        )
        if best is None or cost < best[0]:
            best = (cost, detail)
    known = ", ".join(f"{a} {k}" for a, k, _ in signatures.head(5).itertuples(index=False))
    raise InvalidParametersError(
        f"{source}: its architecture is not one the zoo at {ms.root} knows ({len(found)} tensors); "
        f"{best[1] if best else 'the zoo has no models'}. Known signatures include: {known}"
    )


#: The folder, under ``make lps``'s output, of the LPS trained on every model of the set.
SEARCH_DIR = "search"


def find_lps(path: str | os.PathLike) -> Path:
    """The LPS checkpoint folder at ``path``: itself, its ``search/`` folder (trained on every task),
    or else the first checkpoint folder under it."""
    root = Path(path)
    if (root / CONFIG_FILE).exists():
        return root
    if (root / SEARCH_DIR / CONFIG_FILE).exists():
        return root / SEARCH_DIR
    candidates = sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}")) if root.is_dir() else []
    if not candidates:
        raise ModelSetError(
            f"{root}: no trained LPS found (no {CONFIG_FILE}); train one with "
            f"`python -m lps train --zoo PATH --out {root}`"
        )
    return candidates[0]


def search(
    scorer: LPS,
    ms,
    state: Mapping[str, torch.Tensor],
    k: int = 5,
    source: str = "checkpoint",
    architecture: str | None = None,
    variant: str | None = None,
    task: str | None = None,
    min_accuracy: float | None = None,
    calibration: Calibration | None = None,
) -> pd.DataFrame:
    """The ``k`` zoo models most similar to ``state`` among those that pass the filters (an exact
    ``architecture``, ``variant`` or ``task``; ``test_accuracy`` at least ``min_accuracy``).

    ``ms`` is a ``ModelSet`` (its models are embedded on every call) or a ``lps.index.ZooIndex``
    of it (its saved embeddings are used; only ``state`` is embedded).

    Columns: model_id, task, score, architecture, variant, test_accuracy, and with a
    ``calibration`` (:mod:`lps.calibration`) the probability ``p_same_task`` that the hit solves
    the query's task (``p_same_labels``, ``p_same_domain`` where the set records them). Raises
    ``ModelSetError`` for ``k < 1`` and when no zoo model passes the filters.
    """
    if int(k) < 1:
        raise ModelSetError(f"k must be at least 1, got {k}")
    table = ms.metadata
    keep = pd.Series(True, index=table.index)
    for column, wanted in (("architecture", architecture), ("variant", variant), ("task", task)):
        if wanted is not None:
            known = sorted(table[column].astype(str).unique())
            if wanted not in known:
                raise ModelSetError(f"{ms.root}: no model has {column} {wanted!r}; the set has {known[:12]}")
            keep &= table[column].astype(str) == wanted
    if min_accuracy is not None:
        keep &= pd.to_numeric(table.get("test_accuracy"), errors="coerce").fillna(-1.0) >= float(min_accuracy)
    ids = list(table.index[keep])
    if not ids:
        raise ModelSetError(f"{ms.root}: no model passes the filters (min accuracy {min_accuracy})")
    arch, kwargs = match_architecture(ms, state, source)
    query = scorer.embed(dict(state), architecture=arch, arch_kwargs=kwargs)
    embeddings = getattr(ms, "embeddings", None)
    if embeddings is not None:
        zoo = embeddings[torch.as_tensor(table.index.get_indexer(ids))]
    else:
        zoo = scorer.embed(ids, ms=ms)
    scores = (zoo @ query[0]).numpy()
    order = scores.argsort()[::-1][: int(k)]
    rows = table.loc[[ids[i] for i in order]]
    accuracy = rows["test_accuracy"] if "test_accuracy" in rows else pd.Series(float("nan"), index=rows.index)
    hits = pd.DataFrame(
        {
            "model_id": [ids[i] for i in order],
            "task": rows["task"].astype(str).to_numpy(),
            "score": scores[order],
            "architecture": rows["architecture"].astype(str).to_numpy(),
            "variant": rows["variant"].astype(str).to_numpy(),
            "test_accuracy": pd.to_numeric(accuracy, errors="coerce").to_numpy(),
        }
    )
    if calibration is not None:
        for question in calibration.curves:
            hits[f"p_{question}"] = calibration.probability(question, hits["score"].to_numpy())
    return hits


def default_lps_folders() -> list[Path]:
    """Where ``lps search`` looks for ``make lps``'s output when no ``--lps`` is given: the current
    folder's ``results/lps``, then the checkout's that holds this package."""
    here = Path.cwd() / "results" / "lps"
    checkout = Path(__file__).resolve().parents[1] / "results" / "lps"
    return [here] if here == checkout else [here, checkout]

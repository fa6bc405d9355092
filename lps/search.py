"""Nearest zoo models to a user's checkpoint.

The checkpoint is read safely (safetensors, or ``torch.load(weights_only=True)``: tensors and
plain containers only, no code). Its architecture is recognised from its key names and tensor
ranks against the architectures of the zoo; its widths, class count and depth are read from its
own shapes (strides, which no weight records, are the zoo signature's), so a 3-class or a
32-channel ``cnn3`` is embedded from its own weight space. Its LPS embedding is compared with the
zoo's (read from the saved zoo index, ``lps.index``).

Which features depend on the shapes (``lps.features``): every Gram is over hidden units and has
the size of the input window (``in_channels·k·k + 1``), and every statistic has a fixed size, so
widths and depth-wise unit counts never change a feature's size; their values do carry the widths
(log traces, singular-value profiles), which the zoo's pruned twins of several widths teach LPS.
The one feature sized by the class count is the head's chained map ``head.map`` ``(classes·d)``:
for a class count the LPS never saw, it cannot be compared, and the zoo side is embedded without
it as well (said in the result's notes) so both sides are compared on the same features.

``lps.search(checkpoint, zoo)`` is the whole search in one call; ``python -m lps search`` prints
the same table, answered by the warm search service (``lps._service``) when one runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelset.errors import InvalidParametersError, ModelSetError

# torch and pandas are imported where used: the search client (lps._service) imports this module
# for its paths and must start in a fraction of torch's import time.
if TYPE_CHECKING:
    import pandas as pd
    import torch

    from lps.calibration import Calibration
    from lps.index import ZooIndex
    from lps.model import LPS

log = logging.getLogger(__name__)

#: ``lps.model.CONFIG_FILE``, named here without importing torch (a test checks they agree).
LPS_CONFIG = "lps.json"
#: The folder, under ``make lps``'s output, of the LPS trained on every model of the set.
SEARCH_DIR = "search"
#: Columns of a search's table, in order (probability columns follow with a calibration).
COLUMNS = ("model_id", "task", "score", "architecture", "variant", "test_accuracy")


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a ``.safetensors`` file or a weights-only torch checkpoint.

    A dict holding the state dict under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix (DataParallel) removed. Raises ``ModelSetError`` naming the file.
    """
    import torch

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


# -- recognising the architecture -----------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """The query's ``architecture`` and ``arch_kwargs`` (canonical JSON); ``zoo_kwargs`` is the zoo
    signature it was read against (equal to ``arch_kwargs`` when the shapes are the zoo's)."""

    architecture: str
    arch_kwargs: str
    zoo_kwargs: str

    @property
    def exact(self) -> bool:
        return self.arch_kwargs == self.zoo_kwargs


def _cnn3_kwargs(state: Mapping[str, Any], zoo_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``cnn3`` kwargs from a state dict's shapes: ``conv{i}.weight`` ``(out, in, 3, 3)`` give the
    depth, widths and input channels, ``head.weight`` ``(classes, width)`` the class count. Strides
    are not in the weights: the zoo signature's, its last one repeated for a deeper network."""
    depth = 0
    while f"conv{depth + 1}.weight" in state:
        depth += 1
    if depth == 0 or "head.weight" not in state:
        return None
    convs = [tuple(state[f"conv{i}.weight"].shape) for i in range(1, depth + 1)]
    head = tuple(state["head.weight"].shape)
    if any(len(shape) != 4 for shape in convs) or len(head) != 2:
        return None
    kwargs = dict(zoo_kwargs)
    kwargs["channels"] = [shape[0] for shape in convs]
    kwargs["num_classes"] = head[0]
    if convs[0][1] != 1 or "in_channels" in kwargs:
        kwargs["in_channels"] = convs[0][1]
    strides = list(zoo_kwargs.get("strides", (2, 2, 1)))
    kwargs["strides"] = (strides + [strides[-1]] * depth)[:depth]
    if "conv1.meta1.weight" in state and len(state["conv1.meta1.weight"].shape) == 4:
        kwargs["nsl_hidden"] = int(state["conv1.meta1.weight"].shape[0])
    return kwargs


def _head_kwargs(state: Mapping[str, Any], zoo_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Any architecture with a ``num_classes``: the class count from its one 2-D weight (the head)."""
    heads = [v for k, v in state.items() if k.endswith("weight") and len(v.shape) == 2]
    if len(heads) != 1:
        return None
    return {**zoo_kwargs, "num_classes": int(heads[0].shape[0])}


#: How an architecture's kwargs are read from a state dict's shapes (others: the class count only).
SHAPE_KWARGS = {"cnn3": _cnn3_kwargs}


def _without_defaults(architecture: str, kwargs: str) -> str:
    """Canonical kwargs without the values the architecture's factory takes by default."""
    import inspect
    import json

    from modelset.architectures import canonical_kwargs
    from modelset.architectures._registry import _ARCHITECTURES

    params = inspect.signature(_ARCHITECTURES.get(architecture).factory).parameters.values()
    defaults = {p.name: list(p.default) if isinstance(p.default, tuple) else p.default for p in params}
    given = json.loads(kwargs)
    return canonical_kwargs({k: v for k, v in given.items() if k not in defaults or defaults[k] != v})


def match_signature(zoo, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Signature:
    """The signature of ``state`` among the architectures of ``zoo`` (a ``ModelSet`` or ``ZooIndex``).

    Zoo signatures are tried most models first: one with exactly ``state``'s keys and shapes, or
    with its keys at other sizes, whose widths and class count are then read from ``state``'s shapes
    (a reading that is itself a zoo signature is that one); failing both, any whose architecture,
    read from the shapes, fits ``state`` (another depth). Raises ``InvalidParametersError`` naming the closest
    zoo signature and how ``state`` differs from it.
    """
    import json

    from modelset.architectures import canonical_kwargs
    from modelset.errors import SchemaError
    from modelset.shards import expected_shapes

    found = {k: tuple(v.shape) for k, v in state.items()}
    signatures = zoo.architectures().sort_values("models", ascending=False)
    rows = [(str(a), str(k)) for a, k, _ in signatures.itertuples(index=False)]
    # A reading equal to a zoo signature up to default values (a 2-class cnn3 of default widths) is it.
    in_zoo: dict[tuple[str, str], str] = {}
    for arch, kwargs in rows:
        in_zoo.setdefault((arch, _without_defaults(arch, kwargs)), kwargs)

    def inferred(arch: str, kwargs: str) -> Signature | None:
        guess = SHAPE_KWARGS.get(arch, _head_kwargs)(state, json.loads(kwargs))
        if guess is None:
            return None
        try:
            candidate = canonical_kwargs(guess)
            if expected_shapes(arch, candidate) != found:
                return None
        except (SchemaError, ValueError, TypeError):
            return None
        known = in_zoo.get((arch, _without_defaults(arch, candidate)))
        return Signature(arch, known, known) if known is not None else Signature(arch, candidate, kwargs)

    best: tuple[int, str] | None = None
    for arch, kwargs in rows:
        expected = expected_shapes(arch, kwargs)
        if expected == found:
            return Signature(arch, kwargs, kwargs)
        if set(expected) == set(found):  # the same tensors at other sizes: read the sizes
            signature = inferred(arch, kwargs)
            if signature is not None:
                return signature
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
    for arch, kwargs in rows:  # other tensors (another depth): read every signature's sizes
        signature = inferred(arch, kwargs)
        if signature is not None:
            return signature
    known = ", ".join(f"{a} {k}" for a, k in rows[:5])
    raise InvalidParametersError(
        f"{source}: its architecture is not one the zoo at {zoo.root} knows ({len(found)} tensors); "
        f"{best[1] if best else 'the zoo has no models'}. Known signatures include: {known}"
    )


def match_architecture(zoo, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, str]:
    """``(architecture, arch_kwargs)`` of ``state`` (see :func:`match_signature`)."""
    signature = match_signature(zoo, state, source)
    return signature.architecture, signature.arch_kwargs


# -- where the LPS is ---------------------------------------------------------------------------
def find_lps(path: str | os.PathLike) -> Path:
    """The LPS checkpoint folder at ``path``: itself, its ``search/`` folder (trained on every task),
    or else the first checkpoint folder under it."""
    root = Path(path)
    if (root / LPS_CONFIG).exists():
        return root
    if (root / SEARCH_DIR / LPS_CONFIG).exists():
        return root / SEARCH_DIR
    candidates = sorted(p.parent for p in root.glob(f"*/{LPS_CONFIG}")) if root.is_dir() else []
    if not candidates:
        raise ModelSetError(
            f"{root}: no trained LPS found (no {LPS_CONFIG}); train one with "
            f"`python -m lps train --zoo PATH --out {root}`"
        )
    return candidates[0]


def default_lps_folders() -> list[Path]:
    """Where ``lps search`` looks for ``make lps``'s output when no ``--lps`` is given: the current
    folder's ``results/lps``, then the checkout's that holds this package."""
    here = Path.cwd() / "results" / "lps"
    checkout = Path(__file__).resolve().parents[1] / "results" / "lps"
    return [here] if here == checkout else [here, checkout]


def resolve_lps(lps: str | os.PathLike | None, zoo: str | os.PathLike, tried: list[Path] | None = None) -> Path:
    """The LPS folder a search uses: ``lps`` (see :func:`find_lps`), else the first of ``tried``
    (:func:`default_lps_folders`) that exists. Raises ``ModelSetError`` saying how to make one."""
    if lps is not None:
        return find_lps(lps)
    tried = default_lps_folders() if tried is None else tried
    found = [p for p in tried if p.exists()]
    if not found:
        raise ModelSetError(
            "no trained LPS found in " + " or ".join(str(p) for p in tried)
            + f"; run `make lps MODELSET={zoo}` or give --lps DIR"
        )
    return find_lps(found[0])


# -- searching ------------------------------------------------------------------------------------
def _feature_base(key: str) -> str:
    return key.rsplit("@", 1)[0]


def query_bank(scorer: LPS, signature: Signature, state: Mapping[str, torch.Tensor]):
    """``(bank, masked, notes)``: the query's feature bank (its own weight space), the network's
    feature keys the zoo side must leave out to be compared on the same features, and notes."""
    from lps._bank import bank_from_spaces
    from lps.weights import WeightSpace

    space = WeightSpace.from_state_dict(signature.architecture, signature.arch_kwargs, dict(state))
    bank = bank_from_spaces([space])
    schema = scorer.net.schema
    unknown = sorted(k for k in bank.tensors if k not in schema)
    bases = {_feature_base(k) for k in unknown}
    masked = tuple(sorted(k for k in schema if _feature_base(k) in bases))
    notes = []
    if not signature.exact:
        notes.append(f"shapes read from the checkpoint: {signature.architecture} {signature.arch_kwargs} "
                     f"(strides from the zoo's {signature.zoo_kwargs})")
    if masked:
        notes.append(
            f"features {', '.join(sorted(bases))} have sizes the LPS never saw ({', '.join(unknown)}; it knows "
            f"{', '.join(masked)}): both sides are compared without them, and the zoo side is embedded "
            "again for that"
        )
    return bank, masked, notes


def search_zoo(
    scorer: LPS,
    zoo,
    state: Mapping[str, torch.Tensor],
    k: int = 5,
    source: str = "checkpoint",
    architecture: str | None = None,
    variant: str | None = None,
    task: str | None = None,
    min_accuracy: float | None = None,
    calibration: Calibration | None = None,
    zoo_embeddings=None,
) -> pd.DataFrame:
    """The ``k`` zoo models most similar to ``state`` among those that pass the filters (an exact
    ``architecture``, ``variant`` or ``task``; ``test_accuracy`` at least ``min_accuracy``).

    ``zoo`` is a ``ModelSet`` (its models are embedded on every call) or a ``lps.index.ZooIndex``
    of it (its saved embeddings are used; only ``state`` is embedded). ``zoo_embeddings`` is a
    callable ``masked -> (N, dim)`` giving the zoo's embeddings without the feature keys
    ``masked`` (cached by the caller), for queries whose features differ in size (module docstring).

    Columns: model_id, task, score, architecture, variant, test_accuracy, and with a
    ``calibration`` (:mod:`lps.calibration`) the probability ``p_same_task`` that the hit solves
    the query's task (``p_same_labels``, ``p_same_domain`` where the set records them).
    ``table.attrs["notes"]`` says how the query was read and compared. Raises ``ModelSetError``
    for ``k < 1`` and when no zoo model passes the filters.
    """
    import pandas as pd
    import torch

    if int(k) < 1:
        raise ModelSetError(f"k must be at least 1, got {k}")
    table = zoo.metadata
    keep = pd.Series(True, index=table.index)
    for column, wanted in (("architecture", architecture), ("variant", variant), ("task", task)):
        if wanted is not None:
            known = sorted(table[column].astype(str).unique())
            if wanted not in known:
                raise ModelSetError(f"{zoo.root}: no model has {column} {wanted!r}; the set has {known[:12]}")
            keep &= table[column].astype(str) == wanted
    if min_accuracy is not None:
        keep &= pd.to_numeric(table.get("test_accuracy"), errors="coerce").fillna(-1.0) >= float(min_accuracy)
    ids = list(table.index[keep])
    if not ids:
        raise ModelSetError(f"{zoo.root}: no model passes the filters (min accuracy {min_accuracy})")
    signature = match_signature(zoo, state, source)
    bank, masked, notes = query_bank(scorer, signature, state)
    query = scorer.embed_bank(_without(bank.conform(scorer.net.schema), masked))
    rows_at = torch.as_tensor(table.index.get_indexer(ids))
    if masked:
        every = zoo_embeddings(masked) if zoo_embeddings is not None else embed_zoo(scorer, zoo, masked)
        embeddings = every[rows_at]
    elif getattr(zoo, "embeddings", None) is not None:
        embeddings = zoo.embeddings[rows_at]
    else:
        embeddings = scorer.embed(ids, ms=zoo)
    scores = (embeddings @ query[0]).numpy()
    order = scores.argsort()[::-1][: int(k)]
    rows = table.loc[[ids[i] for i in order]]
    accuracy = rows["test_accuracy"] if "test_accuracy" in rows else pd.Series(float("nan"), index=rows.index)
    hits = pd.DataFrame(
        {
            "model_id": [ids[i] for i in order],
            "task": rows["task"].astype(str).to_numpy(),
            "score": scores[order].astype("float64"),
            "architecture": rows["architecture"].astype(str).to_numpy(),
            "variant": rows["variant"].astype(str).to_numpy(),
            "test_accuracy": pd.to_numeric(accuracy, errors="coerce").to_numpy(),
        }
    )
    if calibration is not None:
        for question in calibration.curves:
            hits[f"p_{question}"] = calibration.probability(question, hits["score"].to_numpy())
    hits.attrs["notes"] = notes
    return hits


def _without(bank, masked: tuple[str, ...]):
    """``bank`` with the feature keys ``masked`` marked absent (zeros, mask False)."""
    if not masked:
        return bank
    import torch

    from lps._bank import FeatureBank

    tensors, masks = dict(bank.tensors), dict(bank.masks)
    for key in masked:
        tensors[key] = torch.zeros_like(tensors[key])
        masks[key] = torch.zeros_like(masks[key])
    return FeatureBank(tensors, masks, bank.ids)


def embed_zoo(scorer: LPS, zoo, masked: tuple[str, ...]) -> torch.Tensor:
    """Embeddings ``(N, dim)`` of every model of ``zoo`` (its table's row order) without the feature
    keys ``masked``; reads every model's weights from the set."""
    import modelset
    from lps._bank import bank_from_modelset

    ms = zoo if hasattr(zoo, "stacked") else modelset.open(zoo.root)
    ids = list(zoo.metadata.index)
    log.info("embedding the %d models of %s without %s", len(ids), ms.name, ", ".join(masked))
    bank = bank_from_modelset(ms, ids).conform(scorer.net.schema)
    return scorer.embed_bank(_without(bank, masked))


@dataclass
class ZooSearch:
    """An LPS, its calibration and the zoo's index, loaded once to answer many queries (the command
    line and the search service use it alike). :meth:`stale` says when its files changed."""

    zoo: Path
    folder: Path
    scorer: LPS
    calibration: Calibration | None
    index: ZooIndex | Any
    stamp: tuple = ()
    _masked: dict[tuple[str, ...], Any] = field(default_factory=dict)

    @classmethod
    def load(cls, zoo: str | os.PathLike, lps: str | os.PathLike | None = None, *, use_index: bool = True) -> ZooSearch:
        """Load the LPS at ``lps`` (:func:`resolve_lps`), its calibration if any and the zoo's
        index (rebuilt when stale; with ``use_index=False`` the set itself, embedded per query)."""
        import modelset
        from lps.calibration import CALIBRATION_FILE, Calibration
        from lps.index import load_index
        from lps.model import LPS

        folder = resolve_lps(lps, zoo)
        scorer = LPS.load(folder)
        calibration = Calibration.load(folder) if (folder / CALIBRATION_FILE).exists() else None
        index = load_index(scorer, zoo, folder) if use_index else modelset.open(zoo)
        # Stamped after loading: an index rebuilt just now is the one this search holds.
        return cls(Path(zoo), folder, scorer, calibration, index, _stamp(zoo, folder))

    def stale(self) -> str | None:
        """What changed since loading (the set's checksums, the LPS, its calibration or the
        index files), or None."""
        now = _stamp(self.zoo, self.folder)
        changed = [name for name, a, b in zip(_STAMPED, self.stamp, now) if a != b]
        return ", ".join(changed) if changed else None

    def embeddings_without(self, masked: tuple[str, ...]):
        if masked not in self._masked:
            self._masked[masked] = embed_zoo(self.scorer, self.index, masked)
        return self._masked[masked]

    def query(self, state: Mapping[str, torch.Tensor], source: str = "checkpoint", k: int = 5, **filters: Any) -> pd.DataFrame:
        """The hits table of one state dict (:func:`search_zoo`)."""
        return search_zoo(self.scorer, self.index, state, k=k, source=source, calibration=self.calibration,
                          zoo_embeddings=self.embeddings_without, **filters)  # fmt: skip


_STAMPED = ("the model set", "the LPS", "the calibration", "the zoo index")


def _stamp(zoo: str | os.PathLike, folder: Path) -> tuple:
    """Digests of the set and the LPS (``lps.index``) and the identity of the calibration and index files."""
    from lps.calibration import CALIBRATION_FILE
    from lps.index import INDEX_TABLE, INDEX_TENSORS, lps_digest, set_digest

    def identity(*paths: Path) -> tuple:
        out = []
        for path in paths:
            try:
                st = path.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    return (set_digest(zoo), lps_digest(folder), identity(folder / CALIBRATION_FILE),
            identity(folder / INDEX_TABLE, folder / INDEX_TENSORS))  # fmt: skip


def answer(session: ZooSearch, items, k: int = 5, **filters: Any) -> list[dict[str, Any]]:
    """One entry per ``(path, state or None)`` of ``items`` (None: read here):
    ``{"checkpoint", "hits", "good_match", "notes"}`` or, when it cannot be searched,
    ``{"checkpoint", "error"}``. The command line and the search service print these alike."""
    out: list[dict[str, Any]] = []
    for path, state in items:
        try:
            state = load_checkpoint(path) if state is None else state
            table = session.query(state, str(path), k=k, **filters)
        except ModelSetError as exc:
            out.append({"checkpoint": str(path), "error": str(exc)})
            continue
        out.append({"checkpoint": str(path), "hits": rows(table), "good_match": good_match(table),
                    "notes": list(table.attrs.get("notes", []))})  # fmt: skip
    return out


def rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The hits as JSON-ready records (NaN as None)."""
    out = []
    for record in table.to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in record.items()})
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return value


def search(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    zoo: str | os.PathLike,
    *args: Any,
    lps: str | os.PathLike | None = None,
    k: int = 10,
    architecture: str | None = None,
    variant: str | None = None,
    task: str | None = None,
    min_accuracy: float | None = None,
    use_index: bool = True,
    **legacy: Any,
) -> pd.DataFrame:
    """The zoo models nearest to ``checkpoint`` — the table ``python -m lps search --json`` prints.

    ``checkpoint``: a ``.safetensors`` or weights-only torch file (or a state dict); ``zoo``: the
    model set folder; ``lps``: the LPS folder (default as the command line: ``results/lps`` here,
    else in this checkout). Columns as :func:`search_zoo`: model_id, task, score, architecture,
    variant, test_accuracy and, with a calibration beside the LPS, p_same_task, p_same_labels,
    p_same_domain. ``table.attrs``: ``notes`` (how the query was compared), ``good_match`` (the best
    hit's p_same_task is at least 0.5; None uncalibrated), ``zoo`` and ``lps`` folders.

    The older form ``search(scorer, ms_or_index, state, k=5, ...)`` still runs :func:`search_zoo`.
    """
    from lps.model import LPS

    if isinstance(checkpoint, LPS):  # search(scorer, ms_or_index, state, ...), before 0.2
        import warnings

        warnings.warn("lps.search(scorer, zoo, state) is lps.search.search_zoo now; lps.search takes "
                      "(checkpoint, zoo)", DeprecationWarning, stacklevel=2)  # fmt: skip
        legacy.update({"architecture": architecture, "variant": variant, "task": task, "min_accuracy": min_accuracy})
        legacy.setdefault("k", 5 if k == 10 else k)
        return search_zoo(checkpoint, zoo, *args, **legacy)
    if args or legacy:
        raise TypeError(f"lps.search takes (checkpoint, zoo, *, lps, k, filters); got extra {args or sorted(legacy)}")
    session = ZooSearch.load(zoo, lps, use_index=use_index)
    if isinstance(checkpoint, Mapping):
        state, source = dict(checkpoint), "checkpoint"
    else:
        state, source = load_checkpoint(checkpoint), str(checkpoint)
    table = session.query(state, source, k=k, architecture=architecture, variant=variant, task=task,
                          min_accuracy=min_accuracy)  # fmt: skip
    table.attrs.update(good_match=good_match(table), zoo=str(session.zoo), lps=str(session.folder))
    return table


def good_match(table: pd.DataFrame) -> bool | None:
    """Whether the best hit solves the query's task with probability at least ``GOOD_MATCH``
    (None without a calibration)."""
    from lps.calibration import GOOD_MATCH

    return bool(table["p_same_task"].iloc[0] >= GOOD_MATCH) if "p_same_task" in table else None


class _CallableModule(types.ModuleType):
    """Lets ``lps.search(checkpoint, zoo)`` call :func:`search` while ``from lps.search import ...``
    keeps naming this module's contents (as ``lps.train``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

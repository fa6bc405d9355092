"""Read a model set: tables as pandas, parameters as torch tensors, models as modules."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from modelset._untrusted import parse_json, read_bytes, read_parquet, regular_file, regular_folder
from modelset.architectures import build_architecture
from modelset.errors import (
    InvalidParametersError,
    MissingModelError,
    NotAModelSetError,
    SchemaError,
)
from modelset.folds import (
    DEFAULT_K,
    FOLDS_FILE,
    MAX_FOLDS_BYTES,
    FoldConfig,
    Split,
    make_folds,
    parse_folds,
)
from modelset.schema import (
    HEADER_FILE,
    MODELS_FILE,
    RELATIONS_DIR,
    REQUIRED_TABLE_COLUMNS,
    TASKS_FILE,
    read_header,
    shard_index,
)
from modelset.shards import ShardReader, check_state_fits, expected_kinds, expected_shapes

log = logging.getLogger(__name__)


def open(path: str | os.PathLike) -> ModelSet:  # noqa: A001 - the API is modelset.open
    """Open the model set at ``path`` (a folder). Reads the header and model table only."""
    return ModelSet(path)


def _read_parquet(path: Path, what: str = "table", root: Path | None = None) -> pd.DataFrame:
    """A Parquet table of the set, its declared sizes checked first (``_untrusted.read_parquet``)."""
    try:
        return read_parquet(path, what, root)
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: missing; the model set is incomplete (run verify)") from exc


class ModelSet:
    """A model set on disk. Tables are read on open; parameters only when asked for.

    Attributes: ``header`` (dict), ``metadata`` (models, indexed by ``model_id``), ``tasks``,
    ``relations`` (dict of task × task DataFrames).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        if not self.root.exists():
            raise NotAModelSetError(f"{self.root}: no such file or folder")
        if not self.root.is_dir():
            raise NotAModelSetError(f"{self.root}: is a file, expected a model set folder")
        if not (self.root / HEADER_FILE).exists():
            raise NotAModelSetError(f"{self.root}: not a model set (no {HEADER_FILE})")
        self.header: dict[str, Any] = read_header(self.root)
        self.metadata = self._read_models()
        self._shards: dict[str, ShardReader] = {}

    def __repr__(self) -> str:
        return f"ModelSet({str(self.root)!r}, name={self.name!r}, models={len(self)})"

    def __len__(self) -> int:
        return len(self.metadata)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.metadata.index

    @property
    def name(self) -> str:
        return str(self.header["name"])

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    def __enter__(self) -> ModelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tables ---------------------------------------------------------------------------
    def _read_models(self) -> pd.DataFrame:
        path = self.root / MODELS_FILE
        if not path.exists() and not path.is_symlink():  # a set whose first shard is not committed yet
            return pd.DataFrame(columns=list(REQUIRED_TABLE_COLUMNS)).set_index("model_id")
        table = _read_parquet(path, "model table", self.root)
        missing = [c for c in REQUIRED_TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise SchemaError(f"{path}: model table lacks required columns {missing}")
        # Column types the reader relies on to find parameters (a damaged table fails here, by name).
        for column in ("model_id", "architecture", "arch_kwargs", "shard", "checkpoints"):
            empty = table[column].isna().to_numpy()
            if empty.any():
                named = "rows" if column == "model_id" else "models"
                where = np.flatnonzero(empty) if column == "model_id" else table.loc[empty, "model_id"]
                raise SchemaError(f"{path}: column {column!r} is empty for {named} {list(where[:5])}")
            kind = pd.api.types.infer_dtype(table[column], skipna=False)
            if len(table) and kind != "string":
                raise SchemaError(f"{path}: column {column!r} must hold strings, found {kind} values")
        for column in ("block", "index"):
            if not pd.api.types.is_integer_dtype(table[column]) or (table[column] < 0).any():
                raise SchemaError(
                    f"{path}: column {column!r} must hold non-negative integers, found {table[column].dtype}"
                )
        if table["model_id"].duplicated().any():
            dupes = table.loc[table["model_id"].duplicated(), "model_id"].tolist()[:5]
            raise SchemaError(f"{path}: model ids appear more than once: {dupes}")
        return table.set_index("model_id")

    @cached_property
    def tasks(self) -> pd.DataFrame:
        path = self.root / TASKS_FILE
        if not path.exists() and not path.is_symlink():
            return pd.DataFrame(index=pd.Index([], name="task"))
        return _read_parquet(path, "task table", self.root)

    @cached_property
    def relations(self) -> dict[str, pd.DataFrame]:
        folder = self.root / RELATIONS_DIR
        out: dict[str, pd.DataFrame] = {}
        if not folder.exists():
            return out
        regular_folder(folder, self.root)
        for path in sorted(folder.glob("*.csv")):
            try:
                regular_file(path, "relation matrix", self.root)
                frame = pd.read_csv(path, index_col=0)
            except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
                raise SchemaError(f"{path}: relation matrix cannot be read ({exc})") from exc
            frame.index = frame.index.astype(str)
            frame.columns = frame.columns.astype(str)
            if list(frame.index) != list(frame.columns):
                raise SchemaError(f"{path}: rows and columns must list the same task ids")
            if not all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
                raise SchemaError(f"{path}: relation values must be numbers")
            out[path.stem] = frame
        return out

    @cached_property
    def folds(self) -> list[Split]:
        """The task folds of the evaluation protocol (``splits/folds.json``; see
        :mod:`modelset.folds`). A set built before folds shipped gets them computed from its table
        with the default fold config, or none when it has too few tasks or model families."""
        path = self.root / FOLDS_FILE
        if not path.exists():
            log.info("%s has no %s; using the default %d task folds", self.root, FOLDS_FILE, DEFAULT_K)
            try:
                return make_folds(self.metadata, FoldConfig.from_dict((self.header.get("config") or {}).get("folds")))
            except SchemaError as exc:  # too few tasks or families: the set supports no evaluation
                log.warning("%s: no task folds (%s)", self.root, exc)
                return []
        data = read_bytes(path, "the task fold file", MAX_FOLDS_BYTES, root=self.root)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError(f"{path}: not UTF-8 text ({exc})") from exc
        return parse_folds(text, self.metadata, str(path))

    @cached_property
    def checkpoint_table(self) -> pd.DataFrame:
        """One row per named checkpoint of a training trajectory: ``model_id``, ``checkpoint``,
        ``epoch``, ``step``, ``test_accuracy``, ``train_loss`` (NaN when not recorded), decoded
        from the model table's ``checkpoint_metrics`` column (JSON text per model:
        ``{checkpoint: {"epoch", "step", "test_accuracy", "train_loss"}}``; models without it
        have no rows). Empty when the set has no such column. Rows follow the model table, then
        epoch and step. Raises ``SchemaError`` naming the model for a malformed entry."""
        columns = ["model_id", "checkpoint", "epoch", "step", "test_accuracy", "train_loss"]
        rows: list[tuple[str, str, int, int, float, float]] = []
        if "checkpoint_metrics" in self.metadata.columns:
            for model_id, value, names in zip(
                self.metadata.index, self.metadata["checkpoint_metrics"], self.metadata["checkpoints"]
            ):
                if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                    continue
                rows += _checkpoint_rows(str(model_id), value, str(names).split(","), self.root / MODELS_FILE)
        table = pd.DataFrame(rows, columns=columns).astype(
            {"model_id": str, "checkpoint": str, "epoch": "int64", "step": "int64",
             "test_accuracy": "float64", "train_loss": "float64"}
        )  # fmt: skip
        order = {m: i for i, m in enumerate(self.metadata.index)}
        table["_order"] = table["model_id"].map(order)
        return table.sort_values(["_order", "epoch", "step"], kind="stable").drop(columns="_order").reset_index(drop=True)

    def row(self, model_id: str) -> pd.Series:
        try:
            return self.metadata.loc[model_id]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(str(model_id), self.metadata.index.tolist(), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise MissingModelError(f"model {model_id!r} is not in {self.root}.{hint}") from None

    # -- parameters -----------------------------------------------------------------------
    def _shard(self, name: str) -> ShardReader:
        if name not in self._shards:
            shard_index(name)  # a damaged table must not point the reader outside the set
            path = self.root / name
            if not path.exists() and not path.is_symlink():
                raise MissingModelError(f"{path}: shard listed in the model table is missing")
            regular_file(path, "shard", self.root)  # no links, no FIFOs (``ShardReader`` checks again)
            self._shards[name] = ShardReader(path)
        return self._shards[name]

    def _locate(self, model_id: str, checkpoint: str) -> tuple[ShardReader, int, int]:
        row = self.row(model_id)
        if checkpoint not in str(row["checkpoints"]).split(","):
            raise MissingModelError(
                f"model {model_id!r} has no checkpoint {checkpoint!r}; it has {row['checkpoints']}"
            )
        shard = self._shard(str(row["shard"]))
        block, index = int(row["block"]), int(row["index"])
        ids = shard.model_ids(block)
        if index >= len(ids) or ids[index] != model_id:
            found = ids[index] if index < len(ids) else "nothing"
            raise MissingModelError(
                f"{shard.path}: model {model_id!r} should be at block {block}, index {index}, "
                f"but {found!r} is there; the table and the shard disagree (run verify)"
            )
        return shard, block, index

    def state_dict(self, model_id: str, checkpoint: str = "final") -> dict[str, torch.Tensor]:
        """Parameters and buffers of one model at one checkpoint."""
        shard, block, index = self._locate(model_id, checkpoint)
        row = self.row(model_id)
        architecture, kwargs_json = str(row["architecture"]), str(row["arch_kwargs"])
        expected, kinds = expected_shapes(architecture, kwargs_json), expected_kinds(architecture, kwargs_json)
        arrays = shard.read(block, [index], checkpoint, f"model {model_id!r}", expected, kinds=kinds)
        state = {k: torch.from_numpy(np.asarray(v[0])) for k, v in arrays.items()}
        _check_finite(state, f"model {model_id!r}, checkpoint {checkpoint!r} in {shard.path}")
        return state

    def model(self, model_id: str, checkpoint: str = "final") -> torch.nn.Module:
        """The model rebuilt from its architecture and parameters, in eval mode."""
        row = self.row(model_id)
        # Parameters first: they are checked against the architecture, so the module built next
        # is never larger than what the shard really holds.
        state = self.state_dict(model_id, checkpoint)
        expected = expected_shapes(str(row["architecture"]), str(row["arch_kwargs"]))
        where = f"model {model_id!r}, checkpoint {checkpoint!r}"
        check_state_fits(where, state, expected, str(row["architecture"]))
        module = build_architecture(str(row["architecture"]), str(row["arch_kwargs"]))
        module.load_state_dict(state, strict=True)
        return module.eval()

    def stacked(self, model_ids: Sequence[str], checkpoint: str = "final") -> dict[str, torch.Tensor]:
        """Parameters of many models of one architecture: ``{key: (len(ids), *shape)}``.

        Reads each tensor of each shard block once (one contiguous read where the ids are
        stored together), whatever the number of models, straight into the result.
        """
        ids = list(model_ids)
        if not ids:
            raise ValueError("stacked() needs at least one model id")
        loc = self._locator
        pos = self._positions(ids)
        signatures = np.unique(loc.signature[pos])
        if len(signatures) > 1:
            shown = "; ".join(f"{a} {k}" for a, k in (loc.signatures[c] for c in signatures[:3]))
            raise SchemaError(
                f"stacked() needs models of one architecture; these ids span {len(signatures)} "
                f"signatures: {shown}{'; ...' if len(signatures) > 3 else ''} (group them by the "
                "table's architecture and arch_kwargs columns)"
            )
        for code in np.unique(loc.checkpoints[pos]):
            if checkpoint not in loc.checkpoint_sets[code]:
                mid = ids[int(np.argmax(loc.checkpoints[pos] == code))]
                raise MissingModelError(
                    f"model {mid!r} has no checkpoint {checkpoint!r}; it has {','.join(loc.checkpoint_sets[code])}"
                )
        architecture, kwargs_json = loc.signatures[signatures[0]]
        expected, kinds = expected_shapes(architecture, kwargs_json), expected_kinds(architecture, kwargs_json)
        blocks = loc.block[pos]
        order = np.argsort(blocks, kind="stable")
        cuts = np.flatnonzero(np.diff(blocks[order])) + 1
        id_array = np.asarray(ids, dtype=object)
        # Every block is located and checked before the result is allocated: its size is then
        # backed by tensors that the shards really store.
        plan = []
        for rows in np.split(order, cuts):
            shard_name, block = loc.blocks[blocks[rows[0]]]
            shard = self._shard(shard_name)
            group_ids = [ids[r] for r in rows[:3]]
            what = f"models {group_ids}{'...' if len(rows) > 3 else ''}"
            stored = np.asarray(shard.model_ids(block), dtype=object)
            where = loc.index[pos[rows]]
            found = stored[np.minimum(where, len(stored) - 1)] if len(stored) else np.full(len(where), None)
            wrong = (where >= len(stored)) | (found != id_array[rows])
            if wrong.any():  # vectorised: this runs for every chunk of a bulk read
                bad = int(wrong.argmax())
                raise MissingModelError(
                    f"{shard.path}: model {ids[rows[bad]]!r} is not at block {block}, index {where[bad]} "
                    "where the table puts it (run verify)"
                )
            tensors = shard.checked(block, checkpoint, what, expected, kinds)
            plan.append((shard, block, where, what, rows, tensors))
        out: dict[str, np.ndarray] | None = None
        for shard, block, where, what, rows, tensors in plan:
            if out is None:
                out = {t.name: np.empty((len(ids), *t.shape[1:]), dtype=t.dtype) for t in tensors}
            shard.read(block, where, checkpoint, what, expected, out=out, rows=rows, kinds=kinds)
        assert out is not None
        tensors = {k: torch.from_numpy(v) for k, v in out.items()}
        _check_finite(tensors, f"checkpoint {checkpoint!r} in {self.root}", ids)
        return tensors

    @cached_property
    def _locator(self) -> _Locator:
        return _Locator(self.metadata)

    def _positions(self, ids: list[str]) -> np.ndarray:
        """Rows of ``ids`` in the model table; an unknown id raises ``MissingModelError``."""
        pos = self.metadata.index.get_indexer(ids)
        if (pos < 0).any():
            self.row(ids[int(np.argmax(pos < 0))])  # raises MissingModelError with a did-you-mean hint
        return pos

    def by_signature(self, model_ids: Sequence[str]) -> list[SignatureGroup]:
        """``model_ids`` grouped by architecture signature, the unit of :meth:`stacked`.

        Groups come in the order of their ``(architecture, arch_kwargs)``; within a group the ids
        keep the order (and any repeats) of ``model_ids``, and ``positions`` says where they are
        in it.
        """
        ids = list(model_ids)
        loc = self._locator
        codes = loc.signature[self._positions(ids)]
        groups = []
        for code in sorted(np.unique(codes).tolist(), key=lambda c: loc.signatures[c]):
            positions = np.flatnonzero(codes == code)
            architecture, arch_kwargs = loc.signatures[code]
            groups.append(SignatureGroup(architecture, arch_kwargs, [ids[p] for p in positions], positions))
        return groups

    def iter_by_signature(
        self, model_ids: Sequence[str], checkpoint: str = "final", chunk_size: int = 1024
    ) -> Iterator[tuple[SignatureGroup, dict[str, torch.Tensor]]]:
        """Stream ``model_ids`` of any architectures as :meth:`iter_stacked` chunks, one signature
        at a time; each chunk comes as the group of its ids (with their positions in ``model_ids``)
        and its tensors."""
        for group in self.by_signature(model_ids):
            start = 0
            for chunk, stacked in self.iter_stacked(group.ids, checkpoint, chunk_size):
                positions = group.positions[start : start + len(chunk)]
                yield SignatureGroup(group.architecture, group.arch_kwargs, chunk, positions), stacked
                start += len(chunk)

    def iter_stacked(
        self, model_ids: Sequence[str], checkpoint: str = "final", chunk_size: int = 1024
    ) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
        """Stream ``stacked`` in chunks of ``chunk_size`` models, holding one chunk in memory.

        While a chunk is decoded, the shards of the next one are read ahead by the kernel, so
        disk reads overlap checksum decoding.
        """
        ids = list(model_ids)
        starts = range(0, len(ids), chunk_size)
        for number, start in enumerate(starts):
            if number == 0:
                self._read_ahead(ids[start : start + chunk_size])
            if number + 1 < len(starts):
                self._read_ahead(ids[start + chunk_size : start + 2 * chunk_size])
            chunk = ids[start : start + chunk_size]
            yield chunk, self.stacked(chunk, checkpoint)

    def _read_ahead(self, model_ids: Sequence[str]) -> None:
        """Ask the kernel to start reading the shards of ``model_ids`` (a hint; errors ignored)."""
        if not hasattr(os, "posix_fadvise"):
            return
        pos = self.metadata.index.get_indexer(list(model_ids))
        loc = self._locator
        names = {loc.blocks[code][0] for code in np.unique(loc.block[pos[pos >= 0]])}
        for name in sorted(names):
            try:
                shard_index(name)  # never touch files outside the set
                # Never blocks on a FIFO nor follows a link; such a shard is refused when read.
                fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except (SchemaError, OSError):
                continue  # a bad or missing shard is reported when it is really read
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def architectures(self) -> pd.DataFrame:
        """One row per architecture signature with its model count."""
        return (
            self.metadata.groupby(["architecture", "arch_kwargs"]).size().rename("models").reset_index()
        )

    def info(self) -> dict[str, Any]:
        """A summary: counts per task, architecture and variant, and accuracy quantiles."""
        table = self.metadata
        summary: dict[str, Any] = {
            "name": self.name,
            "path": str(self.root),
            "schema_version": self.header["schema_version"],
            "complete": bool(self.header.get("complete", False)),
            "models": len(table),
            "tasks": int(table["task"].nunique()) if len(table) else 0,
            "relations": sorted(self.relations),
        }
        for column in ("task", "architecture", "variant"):
            summary[f"by_{column}"] = {str(k): int(v) for k, v in table[column].value_counts().sort_index().items()}
        if "test_accuracy" in table:
            acc = pd.to_numeric(table["test_accuracy"], errors="coerce")
            summary["test_accuracy"] = {
                q: round(float(acc.quantile(p)), 4) for q, p in
                (("min", 0.0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("max", 1.0))
            } if len(acc) else {}
            summary["test_accuracy_by_variant"] = {
                str(k): round(float(v), 4) for k, v in acc.groupby(table["variant"]).mean().items()
            }
        return summary


@dataclass(frozen=True)
class SignatureGroup:
    """Models of one architecture signature among the ids given to :meth:`ModelSet.by_signature`."""

    architecture: str
    arch_kwargs: str  # canonical JSON, as in the model table
    ids: list[str]
    positions: np.ndarray  # where ``ids`` are in the list given


class _Locator:
    """The model table's location columns as arrays, so a bulk read finds thousands of models
    without pandas work per chunk. Signatures, blocks and checkpoint lists are coded as ints."""

    def __init__(self, table: pd.DataFrame) -> None:
        def codes(columns: list[str]) -> tuple[np.ndarray, list[tuple]]:
            keys = list(zip(*(table[c].astype(str if c != "block" else int).tolist() for c in columns)))
            values, inverse = pd.factorize(pd.Series(keys, dtype=object)) if keys else (np.zeros(0, int), [])
            return np.asarray(values, dtype=np.int64), [tuple(k) for k in inverse]

        self.signature, self.signatures = codes(["architecture", "arch_kwargs"])
        self.block, self.blocks = codes(["shard", "block"])
        self.checkpoints, names = codes(["checkpoints"])
        self.checkpoint_sets = [tuple(n[0].split(",")) for n in names]
        self.index = table["index"].to_numpy(dtype=np.int64)


def _check_finite(
    tensors: dict[str, torch.Tensor], where: str, stacked_ids: Sequence[str] | None = None
) -> None:
    """Raise ``InvalidParametersError`` naming the tensor (and models) holding NaN or Inf."""
    for key, tensor in tensors.items():
        # numpy's isfinite is ~20x faster than torch's on the CPU; this runs on every bulk read.
        if not tensor.is_floating_point() or bool(np.isfinite(tensor.numpy()).all()):
            continue
        if stacked_ids is not None:
            bad = (~torch.isfinite(tensor.reshape(len(stacked_ids), -1))).any(dim=1).nonzero()
            names = [stacked_ids[i] for i in bad.flatten().tolist()[:5]]
            raise InvalidParametersError(f"{where}: models {names}: tensor {key!r} has NaN or Inf values")
        raise InvalidParametersError(f"{where}: tensor {key!r} has NaN or Inf values")


def _checkpoint_rows(
    model_id: str, value: Any, names: list[str], path: Path
) -> list[tuple[str, str, int, int, float, float]]:
    """The ``checkpoint_metrics`` entry of one model as rows (see ``ModelSet.checkpoint_table``)."""
    where = f"{path}: model {model_id!r}, column 'checkpoint_metrics'"
    if not isinstance(value, str):
        raise SchemaError(f"{where}: expected JSON text, found {type(value).__name__}")
    doc = parse_json(value, where)
    if not isinstance(doc, dict):
        raise SchemaError(f"{where}: expected an object mapping checkpoint names to their figures")
    rows = []
    for name, entry in doc.items():
        if name not in names:
            raise SchemaError(f"{where}: checkpoint {name!r} is not among the model's checkpoints {names}")
        if not isinstance(entry, dict):
            raise SchemaError(f"{where}: checkpoint {name!r}: expected an object, found {type(entry).__name__}")
        for key in ("epoch", "step"):
            v = entry.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SchemaError(f"{where}: checkpoint {name!r}: {key!r} must be a non-negative integer, found {v!r}")
        acc, loss = entry.get("test_accuracy"), entry.get("train_loss")
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= float(acc) <= 1.0:
            raise SchemaError(f"{where}: checkpoint {name!r}: 'test_accuracy' must be a number in [0, 1], found {acc!r}")
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
            raise SchemaError(f"{where}: checkpoint {name!r}: 'train_loss' must be a number or null, found {loss!r}")
        rows.append((model_id, str(name), entry["epoch"], entry["step"], float(acc), np.nan if loss is None else float(loss)))
    return rows


def json_column(value: Any) -> Any:
    """Decode a JSON-string column value (e.g. ``arch_kwargs``), within the limits of untrusted JSON."""
    return parse_json(value, "a JSON column of the model table") if isinstance(value, str) and value else value

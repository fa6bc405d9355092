"""Export a model set for the Hugging Face ``datasets`` library: Parquet files and a card.

``export_hf(SET, OUT)`` writes, for every architecture signature of the set, Parquet files with
one row per model and checkpoint: ``model_id``, ``checkpoint``, the model table's metadata columns
(location columns dropped) and ``parameters``, the model's flattened float32 vector in the order
of its layout file (``layouts/<config>.csv``, copied beside the data). Its ``README.md`` declares
one config per signature (named like the layout file), with a split ``full`` (every model) and, when the set ships
``splits/folds.json``, the splits ``fold<i>_train``, ``fold<i>_heldout_models`` and
``fold<i>_heldout_tasks`` of every fold (a config leaves out the splits it has no models in). So::

    datasets.load_dataset(OUT)                          # the config with most models, every split
    datasets.load_dataset(OUT, "cnn3-fb343d410fb5", split="fold0_train")

work offline. A model is written once: the files of a config are cut by which split of each fold
its models belong to, and a split lists the files it holds.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modelset import _atomic
from modelset.card import (
    CITATION_FILE,
    LICENSE_FILE,
    front_matter,
    hf_header,
    read_folds,
)
from modelset.errors import ExistsError, ModelSetError, SchemaError
from modelset.layout import LAYOUTS_DIR, Layout, set_layouts
from modelset.schema import CARD_FILE

if TYPE_CHECKING:
    from modelset.reader import ModelSet

__all__ = ["ExportError", "LOCATION_COLUMNS", "export_hf"]

log = logging.getLogger(__name__)

#: Model table columns that say where tensors are in the shards: meaningless in an export.
LOCATION_COLUMNS = ("shard", "block", "index", "checkpoints")
ROLES = ("train", "heldout_models", "heldout_tasks")
_ROLE_KEYS = {"train": "train_ids", "heldout_models": "heldout_model_ids", "heldout_tasks": "heldout_task_ids"}


class ExportError(ModelSetError):
    """An export request is not valid."""


def _config_name(layout: Layout) -> str:
    return layout.file_name.removesuffix(".csv")


def _roles(folds: dict[str, Any] | None, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Model id → its role in every fold (``"train"``, ``"heldout_models"``, ``"heldout_tasks"``
    or ``""``)."""
    if folds is None:
        return {mid: () for mid in ids}
    members = [{role: set(map(str, fold.get(key, []))) for role, key in _ROLE_KEYS.items()} for fold in folds["folds"]]
    out = {}
    for mid in ids:
        out[mid] = tuple(next((r for r in ROLES if mid in fold[r]), "") for fold in members)
    return out


def _schema(meta: pd.DataFrame, layout: Layout) -> tuple[pa.Schema, list[str]]:
    """Arrow schema of a config's rows, and the metadata columns it keeps (not all empty)."""
    columns = [c for c in meta.columns if c not in LOCATION_COLUMNS and meta[c].notna().any()]
    base = pa.Schema.from_pandas(meta[columns].reset_index(drop=True), preserve_index=False)
    fields = [pa.field("model_id", pa.string()), pa.field("checkpoint", pa.string())]
    fields += [f for f in base if f.name not in ("model_id", "checkpoint")]
    fields.append(pa.field("parameters", pa.list_(pa.float32(), layout.length)))
    return pa.schema(fields), [f.name for f in fields[2:-1]]


def _write_part(ms: ModelSet, path: Path, ids: list[str], layout: Layout, meta: pd.DataFrame, schema: pa.Schema,
                columns: list[str], chunk_size: int) -> int:
    """Write the rows of ``ids`` (every checkpoint they have) to one Parquet file; return rows."""
    rows = 0
    checkpoints = meta.loc[ids, "checkpoints"].astype(str).str.split(",")
    names = sorted({c for cks in checkpoints for c in cks}, key=lambda c: (c != "final", c))
    with pq.ParquetWriter(path, schema) as writer:
        for checkpoint in names:
            have = [mid for mid, cks in zip(ids, checkpoints) if checkpoint in cks]
            for chunk, tensors in ms.iter_stacked(have, checkpoint, chunk_size):
                flat = layout.flatten({k: v.numpy() for k, v in tensors.items()}, leading=1)
                part = meta.loc[chunk, columns].reset_index(drop=True)
                data = {"model_id": chunk, "checkpoint": [checkpoint] * len(chunk)}
                data.update({c: part[c] for c in columns})
                table = pa.Table.from_pandas(pd.DataFrame(data), preserve_index=False)
                values = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), layout.length)
                table = table.append_column("parameters", values)
                writer.write_table(table.cast(schema))
                rows += len(chunk)
    return rows


def export_hf(
    path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, chunk_size: int = 256
) -> Path:
    """Write the Hugging Face export of the set at ``path`` into the folder ``out``; return it.

    ``out`` appears only once complete (written beside it under a temporary name). An existing
    ``out`` raises ``ExistsError`` unless ``overwrite``.
    """
    from modelset.reader import ModelSet

    root, out = Path(path), Path(out).absolute()
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ExportError(f"{out} is inside the model set {root}; export to a folder outside it (a set holds only its own files)")
    if out.exists() and not overwrite:
        raise ExistsError(f"{out} exists; choose another folder or pass overwrite=True (--overwrite)")
    with ModelSet(root) as ms:
        if not len(ms.metadata):
            raise SchemaError(f"{root}: the model set has no models to export")
        folds = read_folds(root)
        meta = ms.metadata.copy()
        meta.insert(0, "model_id", meta.index.astype(str))
        roles = _roles(folds, meta.index.tolist())
        staging = out.parent / f"{_atomic.TMP_PREFIX}{out.name}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            configs = []
            for layout, ids in set_layouts(ms):
                name = _config_name(layout)
                _atomic.write_text_atomic(staging / LAYOUTS_DIR / layout.file_name, layout.to_csv())
                schema, columns = _schema(meta.loc[ids], layout)
                groups: dict[tuple[str, ...], list[str]] = {}
                for mid in sorted(ids):
                    groups.setdefault(roles[mid], []).append(mid)
                splits: dict[str, list[str]] = {"full": []}
                n_rows = 0
                for k, (pattern, members) in enumerate(sorted(groups.items())):
                    rel = f"data/{name}/part-{k:05d}.parquet"
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    n_rows += _write_part(ms, staging / rel, members, layout, meta, schema, columns, chunk_size)
                    splits["full"].append(rel)
                    for fold, role in enumerate(pattern):
                        if role:
                            splits.setdefault(f"fold{fold}_{role}", []).append(rel)
                configs.append({
                    "config_name": name,
                    "data_files": [{"split": s, "path": files} for s, files in splits.items()],
                    "_models": len(ids), "_rows": n_rows, "_layout": layout, "_splits": list(splits),
                })  # fmt: skip
                log.info("exported %s: %d models, %d rows, %d files", name, len(ids), n_rows, len(groups))
            default = max(configs, key=lambda c: (c["_models"], c["config_name"]))
            default["default"] = True
            for name in (LICENSE_FILE, CITATION_FILE):
                if (root / name).exists():
                    shutil.copyfile(root / name, staging / name)
            public = [{k: v for k, v in c.items() if not k.startswith("_")} for c in configs]
            header = hf_header(ms.header, ms.metadata, public)
            body = _card_body(ms, configs, folds)
            _atomic.write_text_atomic(staging / CARD_FILE, front_matter(header) + "\n" + body)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _atomic.replace_folder(staging, out)
    log.info("Hugging Face export of %s written to %s", root, out)
    return out


def _card_body(ms: ModelSet, configs: list[dict[str, Any]], folds: dict[str, Any] | None) -> str:
    from modelset.card import _citation_section, _licence_section, _preprocessing_text, _table

    default = next(c["config_name"] for c in configs if c.get("default"))
    rows = [[f"`{c['config_name']}`" + (" (default)" if c.get("default") else ""), c["_layout"].architecture,
             f"`{c['_layout'].arch_kwargs}`", f"{c['_layout'].length:,}", c["_models"], c["_rows"],
             ", ".join(c["_splits"])] for c in configs]  # fmt: skip
    fold_text = (
        f"The `fold<i>_*` splits come from the set's `splits/folds.json` ({len(folds['folds'])} task folds, "
        "every task held out once): `train` are the models a learned method may fit on, "
        "`heldout_models` the models of training tasks kept out of fitting, `heldout_tasks` every "
        "model of the fold's held-out tasks.\n"
        if folds else "The set ships no `splits/folds.json`, so each config has the split `full` only.\n"
    )
    return "\n".join([
        f"# ModelSet `{ms.name}` for Hugging Face `datasets`",
        "",
        f"The parameters of the {len(ms)} models of the model set `{ms.name}` as Parquet: one row per "
        "model and checkpoint with `model_id`, `checkpoint` (`final`, and `init` where stored), the "
        "model's metadata columns and `parameters`, its flattened float32 vector. One config per "
        "architecture signature; `layouts/<config>.csv` says where each tensor is in the vector "
        "(`tensor, shape, offset, size, dtype`).",
        "",
        "```python",
        "import datasets",
        f"ds = datasets.load_dataset('PATH', '{default}', split='full').with_format('numpy')",
        "final = ds.filter(lambda row: row['checkpoint'] == 'final')",
        "vectors = final[:]['parameters']   # (n_models, length) float32",
        "```",
        "",
        "## Configs",
        "",
        _table(["config", "architecture", "arch_kwargs", "parameters", "models", "rows", "splits"], rows, "lllrrrl"),
        fold_text,
        "## Inputs",
        "",
        _preprocessing_text(ms.tasks),
        "## Licence",
        "",
        _licence_section(ms.metadata),
        "## Citation",
        "",
        _citation_section(ms.header),
    ])


"""A saved zoo index for ``lps search``: every model's LPS embedding and key table columns.

The index lives beside the LPS it was computed with, in two files:

    zoo_index.parquet        one row per model: model_id, task, architecture, arch_kwargs,
                             variant, test_accuracy, recipe_family (the columns the set has)
    zoo_index.safetensors    ``embeddings`` (N, dim) in the parquet's row order; its metadata
                             ties it to the set (sha256 of SHA256SUMS), to the LPS (sha256 of its
                             two files) and to the parquet (sha256 of its bytes)

A search reads the index when both digests match and rebuilds it (logged) when they do not, so a
stale index is never used. Both files are written through temporary names and renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelset._atomic import atomic_paths
from modelset.errors import ModelSetError

if TYPE_CHECKING:  # torch and pandas are imported where used: `lps search` start-up pays for them once
    import pandas as pd
    import torch

    from lps.model import LPS

log = logging.getLogger(__name__)

INDEX_TABLE = "zoo_index.parquet"
INDEX_TENSORS = "zoo_index.safetensors"
INDEX_FORMAT = "lps-zoo-index-v1"
#: Model table columns kept in the index (those the set has): the filters and the printed hits.
KEY_COLUMNS = ("task", "architecture", "arch_kwargs", "variant", "test_accuracy", "recipe_family")
CHECKSUMS_FILE = "SHA256SUMS"


def _sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise ModelSetError(f"{path}: cannot be read ({exc.strerror})") from exc
    return digest.hexdigest()


def set_digest(zoo: str | os.PathLike) -> str:
    """sha256 of the set's SHA256SUMS (which covers every file of the set)."""
    path = Path(zoo) / CHECKSUMS_FILE
    if not path.is_file():
        raise ModelSetError(f"{path}: missing; a complete model set lists its files there (rebuild or fetch the set)")
    return _sha256([path])


def lps_digest(folder: str | os.PathLike) -> str:
    """sha256 of an LPS checkpoint folder's configuration and weights."""
    from lps.model import CONFIG_FILE, TENSORS_FILE

    return _sha256([Path(folder) / CONFIG_FILE, Path(folder) / TENSORS_FILE])


@dataclass
class ZooIndex:
    """Embeddings ``(N, dim)`` of a set's models under one LPS, with their key columns.

    ``table`` is indexed by model_id in the embeddings' row order. It answers ``architectures()``
    and ``root`` like a ``ModelSet``, so ``lps.search`` takes either.
    """

    root: Path
    name: str
    table: pd.DataFrame
    embeddings: torch.Tensor
    set_digest: str
    lps_digest: str
    path: Path

    @property
    def metadata(self) -> pd.DataFrame:
        return self.table

    def architectures(self) -> pd.DataFrame:
        """One row per architecture signature with its model count (as ``ModelSet.architectures``)."""
        return self.table.groupby(["architecture", "arch_kwargs"]).size().rename("models").reset_index()


def build_index(scorer: LPS, ms, lps_folder: str | os.PathLike) -> ZooIndex:
    """Embed every model of ``ms`` with ``scorer`` and write the index into ``lps_folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    folder = Path(lps_folder)
    digest_set, digest_lps = set_digest(ms.root), lps_digest(folder)
    ids = list(ms.metadata.index)
    columns = [c for c in KEY_COLUMNS if c in ms.metadata.columns]
    table = ms.metadata.loc[ids, columns].copy()
    for column in columns:
        if column != "test_accuracy":
            table[column] = table[column].astype(str)
    table.index = table.index.astype(str).rename("model_id")
    embeddings = scorer.embed(ids, ms=ms).contiguous()
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table.reset_index(), preserve_index=False), buffer)
    data = buffer.getvalue()
    metadata = {
        "format": INDEX_FORMAT,
        "set_digest": digest_set,
        "lps_digest": digest_lps,
        "table_sha256": hashlib.sha256(data).hexdigest(),
        "name": str(ms.name),
        "models": str(len(ids)),
    }
    try:
        # The tensors' metadata records the table's hash: renamed last, they commit the pair.
        with atomic_paths(folder / INDEX_TABLE, folder / INDEX_TENSORS) as (tmp_table, tmp_tensors):
            tmp_table.write_bytes(data)
            save_file({"embeddings": embeddings}, str(tmp_tensors), metadata=metadata)
    except OSError as exc:
        raise ModelSetError(
            f"{folder}: cannot write the zoo index there ({exc.strerror}); copy the LPS folder somewhere "
            "writable and give it with --lps, or search with --no-index"
        ) from exc
    log.info("zoo index of %d models of %s written to %s", len(ids), ms.name, folder)
    return ZooIndex(Path(ms.root), str(ms.name), table, embeddings, digest_set, digest_lps, folder)


def read_index(lps_folder: str | os.PathLike, zoo: str | os.PathLike) -> ZooIndex | None:
    """The index in ``lps_folder`` for the set at ``zoo``, or None when it is missing or stale
    (another set, another LPS). Raises ``ModelSetError`` naming a damaged index file."""
    from safetensors import safe_open

    from modelset._untrusted import read_parquet, regular_file

    folder = Path(lps_folder)
    tensors_path, table_path = folder / INDEX_TENSORS, folder / INDEX_TABLE
    if not tensors_path.exists() or not table_path.exists():
        log.warning("no zoo index in %s: embedding the zoo's models and writing one", folder)
        return None
    rebuild = f"; delete it or rebuild it with `python -m lps index --zoo {zoo} --lps {folder}`"
    try:
        regular_file(tensors_path, "zoo index")
        regular_file(table_path, "zoo index table")
        with safe_open(str(tensors_path), "pt") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings")
    except ModelSetError as exc:
        raise ModelSetError(f"{exc}{rebuild}") from exc
    except Exception as exc:  # safetensors raises its own error types
        raise ModelSetError(f"{tensors_path}: not a readable zoo index ({exc}){rebuild}") from exc
    if metadata.get("format") != INDEX_FORMAT:
        raise ModelSetError(f"{tensors_path}: format {metadata.get('format')!r}, expected {INDEX_FORMAT!r}{rebuild}")
    digest_set, digest_lps = set_digest(zoo), lps_digest(folder)
    if metadata.get("set_digest") != digest_set or metadata.get("lps_digest") != digest_lps:
        changed = " and ".join(
            what for what, stored, now in (("the model set", metadata.get("set_digest"), digest_set),
                                           ("the LPS weights", metadata.get("lps_digest"), digest_lps))
            if stored != now
        )  # fmt: skip
        log.warning("zoo index in %s is stale (%s changed): rebuilding it", folder, changed)
        return None
    data = table_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != metadata.get("table_sha256"):
        raise ModelSetError(f"{table_path}: does not match {tensors_path.name} (damaged or from another build){rebuild}")
    try:
        # The hardened reader of the set's own tables: sizes checked before anything is decoded.
        table = read_parquet(table_path, "zoo index table").set_index("model_id")
    except (ModelSetError, KeyError) as exc:
        raise ModelSetError(f"{table_path}: not a readable zoo index table ({exc}){rebuild}") from exc
    if embeddings.ndim != 2 or embeddings.shape[0] != len(table) or not embeddings.isfinite().all():
        raise ModelSetError(
            f"{tensors_path}: embeddings of shape {tuple(embeddings.shape)} do not fit the {len(table)} rows of "
            f"{table_path.name}{rebuild}"
        )
    return ZooIndex(Path(zoo), str(metadata.get("name", Path(zoo).name)), table, embeddings, digest_set, digest_lps, folder)


def load_index(scorer: LPS, zoo: str | os.PathLike, lps_folder: str | os.PathLike) -> ZooIndex:
    """The up-to-date index of the set at ``zoo`` under the LPS in ``lps_folder``: read when it
    matches both, else rebuilt (the set is opened and every model embedded)."""
    index = read_index(lps_folder, zoo)
    if index is not None:
        return index
    import modelset

    return build_index(scorer, modelset.open(zoo), lps_folder)


def describe(index: ZooIndex) -> str:
    """One line about an index, for the command line."""
    return json.dumps(
        {"models": len(index.table), "dim": int(index.embeddings.shape[1]), "set_sha256": index.set_digest[:16],
         "lps_sha256": index.lps_digest[:16], "path": str(index.path)}
    )

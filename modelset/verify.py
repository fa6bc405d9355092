"""Check a model set completely: checksums, header, tables, shards, and every model's tensors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modelset import _atomic
from modelset._untrusted import set_files
from modelset.errors import ChecksumError, ModelSetError, NotAModelSetError
from modelset.schema import CHECKSUMS_FILE, SHARDS_DIR, UNCHECKED, shard_index
from modelset.shards import ShardReader, check_state_fits, expected_shapes
from modelset.writer import read_checksums

log = logging.getLogger(__name__)


def verify_checksums(root: Path) -> int:
    """Compare every file with SHA256SUMS; return the number of files checked."""
    if not (root / CHECKSUMS_FILE).exists():
        raise ChecksumError(f"{root}: no {CHECKSUMS_FILE}; the set is incomplete or not a model set")
    sums = read_checksums(root)
    present = {
        rel for rel in set_files(root)
        if Path(rel).name not in UNCHECKED and not Path(rel).name.startswith(_atomic.TMP_PREFIX)
    }
    missing = sorted(set(sums) - present)
    if missing:
        raise ChecksumError(f"{root}: files listed in {CHECKSUMS_FILE} are missing: {missing[:5]}")
    unlisted = sorted(present - set(sums))
    if unlisted:
        raise ChecksumError(f"{root}: files not listed in {CHECKSUMS_FILE}: {unlisted[:5]}")
    for rel, expected in tqdm(sorted(sums.items()), desc="checksums", unit="file", leave=False):
        found = _atomic.sha256_file(root / rel)
        if found != expected:
            raise ChecksumError(
                f"{root / rel}: sha256 mismatch: expected {expected}, found {found}. The file is "
                "damaged or was changed; download or rebuild it"
            )
    return len(sums)


def verify(path: str | os.PathLike, checksums: bool = True) -> dict[str, Any]:
    """Check every checksum, table, shard and model of the set at ``path``.

    Returns a summary ``{"files": .., "models": .., "shards": ..}``; raises a ``ModelSetError``
    subclass naming the file and model at the first problem.
    """
    from modelset.reader import ModelSet

    root = Path(path)
    if not root.is_dir():
        raise NotAModelSetError(f"{root}: no such model set folder")
    files = verify_checksums(root) if checksums else 0
    ms = ModelSet(root)
    try:
        # The closed-shard rules over every object of every shard, used or not (``_hdf5``).
        for rel in set_files(root):
            if rel.startswith(f"{SHARDS_DIR}/") and not Path(rel).name.startswith(_atomic.TMP_PREFIX):
                shard_index(rel)
                reader = ShardReader(root / rel)
                try:
                    reader.audit()
                finally:
                    reader.close()
        _ = ms.tasks, ms.relations, ms.folds  # the folds must name the set's models, each task held out once
        table = ms.metadata
        task_ids = set(ms.tasks.index.astype(str)) if len(ms.tasks) else None
        if task_ids is not None:
            unknown = sorted(set(table["task"].astype(str)) - task_ids)
            if unknown:
                raise ModelSetError(f"{root}: models name tasks missing from the task table: {unknown[:5]}")
        for name, matrix in ms.relations.items():
            if task_ids is not None and not set(matrix.index) <= task_ids:
                raise ModelSetError(f"{root}/relations/{name}.csv: rows name unknown tasks")
        parents = set(table["parent_id"].dropna().astype(str)) - {""}
        orphans = sorted(parents - set(table.index))
        if orphans:
            raise ModelSetError(f"{root}: parent ids not in the model table: {orphans[:5]}")
        groups = table.groupby(["shard", "block"], sort=True)
        for (shard_name, block), group in tqdm(groups, desc="shards", unit="block", leave=False):
            architecture, kwargs = group["architecture"].iloc[0], group["arch_kwargs"].iloc[0]
            expected = expected_shapes(architecture, kwargs)
            shard = ms._shard(str(shard_name))
            stored = shard.model_ids(int(block))
            if len(stored) != len(group) or sorted(stored) != sorted(group.index):
                extra = sorted(set(stored) - set(group.index))[:5]
                lost = sorted(set(group.index) - set(stored))[:5]
                raise ModelSetError(
                    f"{shard.path}, block {block}: shard and table disagree "
                    f"(in shard only: {extra}; in table only: {lost})"
                )
            for checkpoint in str(group["checkpoints"].iloc[0]).split(","):
                shapes = shard.shapes(int(block), checkpoint)
                where = f"model {group.index[0]!r}, checkpoint {checkpoint!r}"
                check_state_fits(where, shapes, expected, architecture)
                ms.stacked(group.index.tolist(), checkpoint)  # reads all: fletcher32 + finiteness
        return {"files": files, "models": len(table), "shards": int(table["shard"].nunique()) if len(table) else 0}
    finally:
        ms.close()

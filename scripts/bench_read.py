"""Read benchmark: the parameters of N models through the bulk API vs per-model files vs raw bytes.

    python scripts/bench_read.py --models 5000
    python scripts/bench_read.py --zoo data/modelset500

Three ways to get the same tensors into memory (best of ``--repeats``; warm page cache, or with
``--cold`` each timed read starts with the files evicted from the page cache):

- bulk: ``ModelSet.iter_stacked`` over every model (HDF5 shards, checksummed chunks, finiteness
  checked), the way LPS and the benchmarks read;
- per-file: one ``torch.save`` file per model, loaded with ``torch.load(weights_only=True)``, the
  way most model zoos ship;
- raw: ``readinto`` of the shard files into one preallocated buffer, no decoding at all (a ceiling).

MB/s counts parameter bytes for all three. Targets at N = 5,000: bulk ≥ 10× per-file torch.load
and ≥ half the raw read speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelset  # noqa: E402
from modelset.runtime import Runtime
from modelset.synthetic import write_synthetic  # noqa: E402


def evict(paths: list[Path]) -> None:
    """Drop these files (only these) from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def best(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=5000, help="models of the synthetic set")
    parser.add_argument("--zoo", help="read this model set instead of a synthetic one")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cold", action="store_true",
                        help="evict the files from the page cache before each timed read (posix_fadvise)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    Runtime(threads=args.threads).apply()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = Path(args.zoo) if args.zoo else write_synthetic(work / "set", args.models, n_tasks=20, seed=0)
        ms = modelset.open(root)
        ids = list(ms.metadata.index)
        n_bytes = 0
        per_model = work / "per_model"
        per_model.mkdir()
        # Bulk reads stack one architecture signature at a time, as LPS and the benchmarks do.
        chunks = ms.iter_by_signature(ids, chunk_size=args.chunk_size)
        for chunk, stacked in tqdm(chunks, desc="per-model files", unit="chunk"):
            for i, mid in enumerate(chunk.ids):
                state = {k: v[i].clone() for k, v in stacked.items()}
                n_bytes += sum(t.numel() * t.element_size() for t in state.values())
                torch.save(state, per_model / f"{mid}.pt")
        shard_files = sorted((root / "shards").glob("*.h5"))
        shard_bytes = sum(p.stat().st_size for p in shard_files)
        buffer = bytearray(max(p.stat().st_size for p in shard_files))

        def bulk() -> None:
            for _chunk, _stacked in ms.iter_by_signature(ids, chunk_size=args.chunk_size):
                pass

        def per_file() -> None:
            for mid in ids:
                torch.load(per_model / f"{mid}.pt", weights_only=True)

        def raw() -> None:
            view = memoryview(buffer)
            for path in shard_files:
                with open(path, "rb", buffering=0) as handle:
                    handle.readinto(view)

        for fn in (bulk, per_file, raw):  # warm the page cache and the code paths
            fn()
        files = {"bulk": shard_files, "per_file": sorted(per_model.iterdir()), "raw": shard_files}
        seconds = {
            name: best(fn, args.repeats, (lambda n=name: evict(files[n])) if args.cold else None)
            for name, fn in (("bulk", bulk), ("per_file", per_file), ("raw", raw))
        }
        ms.close()
    mb = n_bytes / 2**20
    figures = {
        "models": len(ids),
        "cache": "cold (evicted)" if args.cold else "warm",
        "param_mb": round(mb, 1),
        "shard_file_mb": round(shard_bytes / 2**20, 1),
        **{f"{k}_s": round(v, 4) for k, v in seconds.items()},
        **{f"{k}_mb_s": round(mb / v, 1) for k, v in seconds.items()},
        "bulk_vs_per_file": round(seconds["per_file"] / seconds["bulk"], 1),
        "bulk_vs_raw": round(seconds["raw"] / seconds["bulk"], 3),
    }
    for key, value in figures.items():
        print(f"{key:20s} {value}")
    print(
        f"bulk read is {figures['bulk_vs_per_file']}x per-file torch.load (target >= 10x) and "
        f"{figures['bulk_vs_raw']:.2f} of the raw read speed (target >= 0.5)"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

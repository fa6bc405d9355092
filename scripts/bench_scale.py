"""Scale benchmark: synthetic model sets of 500, 5,000 and 50,000 small CNNs in the real format.

    python scripts/bench_scale.py                        # 500, 5000, 50000 models
    python scripts/bench_scale.py --sizes 500 5000 --out results/bench_scale.json

For each size it prints: generation time, time to open the set and read its model table (no
parameters), time and peak memory to bulk-read every parameter in streamed chunks
(``ModelSet.iter_stacked``), LPS embedding throughput (features + network, streamed), and top-k
nearest-model search time over the embeddings. Targets: open + table < 2 s at 50,000 models,
costs linear in the number of models, bulk-read memory bounded by one chunk.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelset  # noqa: E402
from modelset.runtime import Runtime
from modelset.synthetic import write_synthetic  # noqa: E402

log = logging.getLogger("bench_scale")
N_TASKS = 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_scorer(path: Path, epochs: int):
    """A small LPS scorer trained on the 500-model set (throughput, not quality, is measured)."""
    try:
        from lps.train import train
    except ImportError:
        return None
    with modelset.open(path) as ms:
        tasks = sorted(ms.metadata["task"].unique())
        return train(ms, train_tasks=tasks[: len(tasks) // 2], epochs=epochs, seed=0)


def open_in_new_process(path: Path) -> float:
    """Seconds for a fresh Python to open the set and read its table (imports excluded, timed
    separately: importing torch alone takes seconds and says nothing about the format)."""
    code = (
        "import time, modelset\n"
        "t0 = time.perf_counter()\n"
        f"ms = modelset.open({str(path)!r}); n = len(ms.metadata)\n"
        "print(time.perf_counter() - t0)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return round(float(result.stdout.strip().splitlines()[-1]), 3)


def embed_streamed(ms, scorer, chunk_size: int) -> torch.Tensor:
    """Embeddings ``(N, dim)`` computed chunk by chunk: LPS if given, else flattened weights."""
    ids = list(ms.metadata.index)
    out = []
    for chunk, stacked in ms.iter_stacked(ids, chunk_size=chunk_size):
        if scorer is None:
            flat = torch.cat([v.reshape(len(chunk), -1) for _, v in sorted(stacked.items())], dim=1)
            out.append(flat)
            continue
        from lps._bank import bank_from_groups
        from lps.features import compute_features
        from lps.weights import WeightSpace

        row = ms.metadata.loc[chunk[0]]
        space = WeightSpace.from_stacked(str(row["architecture"]), str(row["arch_kwargs"]), stacked)
        bank = bank_from_groups([(range(len(chunk)), compute_features(space))], len(chunk), chunk)
        out.append(scorer.embed_bank(bank))
    return torch.cat(out)


def bench_size(n: int, work: Path, scorer, chunk_size: int, queries: int, k: int, keep: bool) -> dict[str, Any]:
    path = work / f"syn-{n}"
    figures: dict[str, Any] = {"models": n}
    t0 = time.perf_counter()
    if not (path / "SHA256SUMS").exists():
        write_synthetic(path, n, n_tasks=N_TASKS, models_per_shard=1000, seed=0, progress=True)
    figures["generate_s"] = round(time.perf_counter() - t0, 2)
    figures["disk_mb"] = round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)

    gc.collect()
    t0 = time.perf_counter()
    ms = modelset.open(path)
    table = ms.metadata
    n_tasks = table["task"].nunique()
    figures["open_table_s"] = round(time.perf_counter() - t0, 3)
    assert len(table) == n and n_tasks == N_TASKS

    ids = list(table.index)
    figures["open_table_new_process_s"] = open_in_new_process(path)

    def bulk_read() -> int:
        n_bytes = 0
        for _chunk, stacked in ms.iter_stacked(ids, chunk_size=chunk_size):
            n_bytes += sum(v.numel() * v.element_size() for v in stacked.values())
            del stacked
        return n_bytes

    t0 = time.perf_counter()
    n_bytes = bulk_read()
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # a second pass for memory: tracing slows the reads it watches
    bulk_read()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures["bulk_read_s"] = round(seconds, 2)
    figures["bulk_read_mb_s"] = round(n_bytes / 2**20 / seconds, 1)
    figures["param_mb"] = round(n_bytes / 2**20, 1)
    figures["bulk_read_peak_mb"] = round(peak / 2**20, 1)  # streamed: about one chunk, whatever n

    t0 = time.perf_counter()
    emb = embed_streamed(ms, scorer, chunk_size)
    seconds = time.perf_counter() - t0
    figures["embed_s"] = round(seconds, 2)
    figures["embed_models_per_s"] = round(n / seconds)
    figures["embedding"] = "lps" if scorer is not None else "flattened weights"

    emb = torch.nn.functional.normalize(emb.float(), dim=1)
    gen = torch.Generator().manual_seed(0)
    picked = torch.randint(0, n, (queries,), generator=gen)
    t0 = time.perf_counter()
    top = (emb[picked] @ emb.T).topk(k + 1, dim=1).indices  # +1: a query finds itself first
    seconds = time.perf_counter() - t0
    figures["topk_ms_per_query"] = round(1000 * seconds / queries, 3)
    tasks = table["task"].to_numpy()
    hits = tasks[top[:, 1:].numpy()] == tasks[picked.numpy()][:, None]
    figures["topk_same_task"] = round(float(hits.mean()), 3)  # sanity: neighbours share the task
    ms.close()
    figures["peak_rss_mb"] = round(peak_rss_mb())
    if not keep:
        shutil.rmtree(path)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--workdir", help="where the sets are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated sets")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lps-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    Runtime(threads=args.threads).apply()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        base = write_synthetic(work / "lps-train", 500, n_tasks=N_TASKS, seed=1)
        t0 = time.perf_counter()
        scorer = train_scorer(base, args.lps_epochs)
        print(f"LPS scorer: {'trained in %.1f s' % (time.perf_counter() - t0) if scorer else 'lps not importable; embedding = flattened weights'}")
        rows = [bench_size(n, work, scorer, args.chunk_size, args.queries, args.k, args.keep) for n in sorted(args.sizes)]
        if args.keep:
            shutil.copytree(work, Path(args.workdir or ".") / "bench_scale_sets", dirs_exist_ok=True)
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in columns))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        scale = last["models"] / first["models"]
        for key in ("open_table_s", "bulk_read_s", "embed_s"):
            print(f"{key}: x{last[key] / max(first[key], 1e-9):.1f} for x{scale:.0f} models")
    big = rows[-1]
    print(f"open + table at {big['models']} models: {big['open_table_s']:.3f} s (target < 2 s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

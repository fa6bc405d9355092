"""Time LPS on a model set: embed every model and score all pairs, and train on one split.

    python scripts/bench_lps.py --zoo data/modelset500          # a built model set
    python scripts/bench_lps.py --synthetic 500                  # a synthetic stand-in of that size

Targets (ModelSet500 on a 2-core CPU): embed all models and score all pairs in under 2 s (timed
from opening the set: tables, shards, checks, reads, features, network and scores);
training (features included) in 10 minutes or less.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelset  # noqa: E402
from lps._bank import bank_from_modelset  # noqa: E402
from lps.splits import fold  # noqa: E402
from lps.train import train  # noqa: E402
from modelset.runtime import Runtime  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", help="model set folder (default: a synthetic set)")
    parser.add_argument("--synthetic", type=int, default=500, help="models in the synthetic set")
    parser.add_argument("--mode", default="pairs", choices=["pairs", "contrastive"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    Runtime(threads=args.threads).apply()
    with tempfile.TemporaryDirectory() as tmp:
        if args.zoo:
            ms = modelset.open(args.zoo)
        else:
            from modelset.synthetic import write_synthetic

            ms = modelset.open(write_synthetic(Path(tmp) / "syn", args.synthetic, n_tasks=20))
        sp = fold(ms, 0)
        start = time.perf_counter()
        scorer = train(
            ms, train_tasks=sp.train_tasks, train_ids=sp.train_ids, mode=args.mode, seed=0, epochs=args.epochs
        )
        train_seconds = time.perf_counter() - start
        ids = list(ms.metadata.index)
        features, embed, score = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with modelset.open(ms.root) as fresh:  # no shard opened or checked by an earlier repeat
                bank = bank_from_modelset(fresh, ids)
            t1 = time.perf_counter()
            emb = scorer.embed_bank(bank)
            t2 = time.perf_counter()
            sim = emb @ emb.T
            t3 = time.perf_counter()
            features.append(t1 - t0)
            embed.append(t2 - t1)
            score.append(t3 - t2)
        figures = {
            "modelset": ms.name,
            "models": len(ids),
            "train_models": len(sp.train_ids),
            "mode": args.mode,
            "epochs": args.epochs,
            "threads": args.threads,
            "features_seconds": round(min(features), 3),
            "network_seconds": round(min(embed), 3),
            "score_all_pairs_seconds": round(min(score), 4),
            "embed_and_score_seconds": round(min(f + e + s for f, e, s in zip(features, embed, score)), 3),
            "pairs_scored": int(sim.numel()),
            "train_seconds": round(train_seconds, 1),
        }
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(
        f"embed {len(ids)} models (read + features + network) and score all {len(ids)}² pairs: "
        f"{figures['embed_and_score_seconds']:.2f} s (target < 2 s); "
        f"train: {figures['train_seconds']:.0f} s (target <= 600 s)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Converged reference: how accurate a cnn3 gets on a task when trained to convergence.

For a few representative tasks of a config, cnn3 models (the config's first cnn3 family, same
architecture and kwargs) are trained long, with a cosine schedule whose learning rate is tuned on a
validation split (the last ``--val`` training images of the task), over several seeds. The script
prints, per task, the tuned learning rate and the test accuracy (mean ± std over seeds), and beside
it the median test accuracy of the set's own cnn3 base models of that task when ``--modelset`` is
given. Two references are measured:

* ``full``: all training images of the task's classes (what the architecture can reach);
* ``budget``: the set's own training slice (``data.train_limit`` images, validation cut from it).

Usage::

    python scripts/converged_reference.py --config configs/modelset500.yaml \\
        --tasks t00,t11,t22,t33,t44 --seeds 2 --epochs 30 [--modelset data/modelset500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from builders.build import load_config
from builders.engine import TaskTensors, TrainSpec, train_models
from builders.tasks import tasks_from_config
from modelset.architectures import build_architecture
from modelset.runtime import Runtime
from modelset.tasks import Task, task_data


def _accuracy(spec: TrainSpec, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    net = build_architecture(spec.architecture, spec.arch_kwargs)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def _split(task: Task, limit: int | None, val: int, root: str | None, test_limit: int | None) -> tuple[TaskTensors, tuple]:
    x, y = task_data(task, "train", root, limit=limit)
    xt, yt = task_data(task, "test", root, limit=test_limit)
    # Validation: the last ``val`` images of the slice, never trained on.
    tr = TaskTensors(x[:-val], y[:-val], x[-val:], y[-val:], task.num_classes)
    return tr, (xt, yt)


def reference(
    cfg: dict,
    task_ids: list[str],
    seeds: int,
    epochs: int,
    lrs: list[float],
    batch_size: int,
    limit: int | None,
    val: int,
) -> dict[str, dict]:
    """Tuned-lr test accuracies per task: ``{task: {"lr": float, "acc": [per seed], "val": {lr: mean}}}``."""
    tasks = {t.task_id: t for t in tasks_from_config(cfg["tasks"])}
    fam = next(f for f in cfg["families"] if f["architecture"] == "cnn3")
    root = (cfg.get("data") or {}).get("root")
    test_limit = (cfg.get("data") or {}).get("test_limit")
    data, test = {}, {}
    for tid in task_ids:
        data[tid], test[tid] = _split(tasks[tid], limit, val, root, test_limit)
    specs = [
        TrainSpec(f"{tid}|{lr}|{s}", tid, "cnn3", dict(fam.get("arch_kwargs") or {}, num_classes=tasks[tid].num_classes),
                  1000 + s, lr, 1e-4, batch_size, "adam", epochs)  # fmt: skip
        for tid in task_ids
        for lr in lrs
        for s in range(seeds)
    ]
    results = train_models(specs, data, progress=True)
    out: dict[str, dict] = {}
    for tid in task_ids:
        runs = [r for r in results if r.spec.task_id == tid]
        val_acc = {lr: statistics.mean(r.test_accuracy for r in runs if r.spec.lr == lr) for lr in lrs}
        best = max(lrs, key=lambda lr: val_acc[lr])
        accs = [_accuracy(r.spec, r.final, *test[tid]) for r in runs if r.spec.lr == best]
        out[tid] = {"lr": best, "acc": accs, "val": val_acc, "train_images": int(data[tid].x_train.shape[0])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/modelset500.yaml")
    ap.add_argument("--tasks", default="t00,t11,t22,t33,t44", help="comma-separated task ids")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lrs", default="0.001,0.003,0.01", help="Adam learning rates to tune over")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--val", type=int, default=500, help="validation images cut from the training slice")
    ap.add_argument("--which", default="full,budget", help="references to measure: full, budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modelset", default=None, help="a built set: compare with its cnn3 base models")
    ap.add_argument("--json", default=None, help="also write the figures into this JSON file (updating "
                    "the references measured now; the config's data.converged_reference names it for the card)")
    args = ap.parse_args()
    Runtime(threads=args.threads).apply()
    cfg = load_config(args.config).to_dict()  # the keys as written
    task_ids = args.tasks.split(",")
    lrs = [float(v) for v in args.lrs.split(",")]
    limit = (cfg.get("data") or {}).get("train_limit")
    figures: dict[str, dict] = {}
    for which in args.which.split(","):
        t0 = time.perf_counter()
        n = None if which == "full" else limit + args.val
        figures[which] = reference(cfg, task_ids, args.seeds, args.epochs, lrs, args.batch_size, n, args.val)
        print(f"[{which}] measured in {time.perf_counter() - t0:.0f}s")
    base = None
    if args.modelset:
        import modelset

        meta = modelset.open(args.modelset).metadata
        base = meta[(meta["variant"] == "base") & (meta["architecture"] == "cnn3")]
    head = f"{'task':6} " + " ".join(f"{w + ' (lr, acc)':>28}" for w in figures)
    print(head + ("   base cnn3 median" if base is not None else ""))
    for tid in task_ids:
        cells = []
        for which in figures:
            f = figures[which][tid]
            sd = statistics.stdev(f["acc"]) if len(f["acc"]) > 1 else 0.0
            cells.append(f"{f['lr']:>8g} {statistics.mean(f['acc']):.4f} ± {sd:.4f}")
        line = f"{tid:6} " + " ".join(f"{c:>28}" for c in cells)
        if base is not None:
            line += f"   {base.loc[base['task'] == tid, 'test_accuracy'].median():.4f}"
        print(line)
    for which in figures:
        means = [statistics.mean(f["acc"]) for f in figures[which].values()]
        print(f"[{which}] mean over tasks: {statistics.mean(means):.4f}")
    if args.json:
        path = Path(args.json)
        # Each kind keeps its own protocol, so `full` and `budget` can come from separate runs.
        record = json.loads(path.read_text()) if path.exists() else {"schema": 2, "references": {}}
        record["config"] = args.config
        for which, tasks in figures.items():
            record["references"][which] = {
                "protocol": {"optimizer": "adam", "schedule": "cosine", "weight_decay": 1e-4,
                             "epochs": args.epochs, "batch_size": args.batch_size, "lrs": lrs,
                             "seeds": args.seeds, "val": args.val},
                "tasks": tasks,
            }  # fmt: skip
        path.write_text(json.dumps(record, indent=2) + "\n")

if __name__ == "__main__":
    main()

"""Benchmark the multi-model engine against a plain one-model-at-a-time loop, in the same run.

Both train the same models (same initialization, data order, optimizer and schedule) on the same
Fashion-MNIST task slice; the script prints model-epochs per second of each, the speed-up, the
test accuracies of both (they must agree within 1 point), and the engine's achieved GFLOP/s
(FLOPs of forward + backward counted by ``torch.utils.flop_counter``) against a measured matmul
peak at the same thread count. After an untimed warm-up, each is timed ``--repeats`` times,
alternating; the speed-up is given best against best (on a shared machine the fastest run is the
least disturbed) and as the median of the paired runs.

With ``--threads 2`` the plain loop splits each kernel over both threads, and the engine trains
two stacks side by side, one per thread (its default ``workers``). The engine keeps freed memory
in the process (a glibc allocator setting, see ``builders.engine.memory``); the plain loop runs in the
same process, so both run with the same allocator.

    python scripts/bench_engine.py --threads 2

With ``--recipes`` it measures instead what the recipe knobs (schedules, init schemes,
augmentation, label smoothing, input normalization, AdamW) cost the engine: the same models are
trained with the original recipe, with the knobs ModelSet500's config draws for its cnn3 models
(``--config``), and with every costly knob on every model (shifts and flips, label smoothing,
[-1, 1] inputs, AdamW), in rotating order, and the times are given as ratios to the original recipe.
Every model sees all its images (``train_fraction`` 1), so the ratios are the knobs' overhead.

    python scripts/bench_engine.py --threads 2 --recipes
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from builders.engine import TaskTensors, TrainSpec, init_model, train_models, train_plain
from modelset.runtime import Runtime
from modelset.tasks import Task, task_data


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Best-of GFLOP/s of an ``n × n`` float32 matmul (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_image(spec: TrainSpec, shape: tuple[int, ...], batch: int = 32) -> float:
    """Forward + backward FLOPs per training image of ``spec``'s model."""
    model = init_model(spec)
    x = torch.randn(batch, *shape)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=int, default=40,
                   help="models per engine call (ModelSet500's cnn3 shards hold 38-49)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arch", default="cnn3")
    p.add_argument("--strides", default="2,2,2", help="cnn3 strides")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    p.add_argument("--workers", type=int, default=None, help="engine stacks (default: --threads)")
    p.add_argument("--recipes", action="store_true", help="time the recipe knobs instead of the plain loop")
    p.add_argument("--config", default="configs/modelset500.yaml", help="whose recipe draws --recipes uses")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtime = Runtime("cpu", threads=args.threads, workers=args.workers).apply()

    task = Task("bench", "fashion_mnist", (0, 1, 2, 3, 4))
    x, y = task_data(task, "train", limit=args.train_limit)
    xt, yt = task_data(task, "test", limit=args.test_limit)
    data = {"bench": TaskTensors(x, y, xt, yt, task.num_classes, task.dataset)}
    kwargs: dict = {"num_classes": task.num_classes}
    if args.arch == "cnn3":
        kwargs["strides"] = [int(s) for s in args.strides.split(",")]
    rng = np.random.default_rng(args.seed)
    specs = []
    for i in range(args.models):  # the build's mix of optimizers and learning rates
        opt = "adam" if i % 2 else "sgd"
        lo, hi = (0.002, 0.02) if opt == "adam" else (0.03, 0.2)
        lr = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        specs.append(TrainSpec(f"m{i}", "bench", args.arch, kwargs, int(rng.integers(2**31 - 1)),
                               lr, 1e-4, args.batch_size, opt, args.epochs))  # fmt: skip

    if args.recipes:
        bench_recipes(args, specs, data)
        return
    # Untimed warm-up: oneDNN builds its kernels for each shape on first use.
    train_models(specs, data, runtime, progress=False)
    train_plain(specs[0], data["bench"])
    engine_times, plain_times = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        engine = train_models(specs, data, runtime, progress=False)
        engine_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain = [train_plain(s, data["bench"]) for s in specs]
        plain_times.append(time.perf_counter() - t)
    t_engine, t_plain = min(engine_times), min(plain_times)
    paired = statistics.median(p / e for p, e in zip(plain_times, engine_times))

    model_epochs = args.models * args.epochs
    n_used = (x.shape[0] // args.batch_size) * args.batch_size
    flops = flops_per_image(specs[0], tuple(x.shape[1:])) * n_used * model_epochs
    peak = matmul_peak()
    acc_e = [r.test_accuracy for r in engine]
    acc_p = [r.test_accuracy for r in plain]
    worst = max(abs(a - b) for a, b in zip(acc_e, acc_p))
    print(f"task: Fashion-MNIST classes 0-4, {x.shape[0]} train / {xt.shape[0]} test images; "
          f"{args.models} × {args.arch}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.threads} thread(s), engine workers {args.workers or args.threads}, "
          f"best of {args.repeats}")  # fmt: skip
    print(f"engine : {model_epochs / t_engine:8.2f} model-epochs/s  ({t_engine:.1f} s)")
    print(f"plain  : {model_epochs / t_plain:8.2f} model-epochs/s  ({t_plain:.1f} s)")
    print(f"speed-up: {t_plain / t_engine:.2f}× (best against best); median of the {args.repeats} "
          f"paired runs {paired:.2f}×")  # fmt: skip
    print(f"accuracy: engine mean {statistics.mean(acc_e):.4f}, plain mean "
          f"{statistics.mean(acc_p):.4f}, largest per-model gap {100 * worst:.2f} points "
          f"({'OK' if worst <= 0.01 else 'MISMATCH'}: must be <= 1 point)")  # fmt: skip
    print(f"engine: {flops / t_engine / 1e9:.2f} GFLOP/s (fwd+bwd) vs matmul peak {peak:.1f} GFLOP/s "
          f"({100 * flops / t_engine / 1e9 / peak:.1f}% of peak); plain loop "
          f"{flops / t_plain / 1e9:.2f} GFLOP/s")  # fmt: skip


def bench_recipes(args: argparse.Namespace, specs: list[TrainSpec], data: dict[str, TaskTensors]) -> None:
    """Engine time with the recipe knobs against the original recipe, same models, same run."""
    runtime = Runtime("cpu", threads=args.threads, workers=args.workers)
    from builders.build import load_config, plan_models
    from builders.tasks import tasks_from_config

    cfg = load_config(args.config)
    planned = [s for s in plan_models(cfg, tasks_from_config(cfg.tasks)) if s.architecture == args.arch]
    knobs = ("schedule", "init", "augment", "label_smoothing", "input_norm")
    drawn = []
    for spec, plan in zip(specs, planned):  # the config's draws, in plan order
        extra = {k: getattr(plan, k) for k in knobs}
        if plan.optimizer == "adamw":
            extra.update(optimizer="adamw", lr=plan.lr, weight_decay=plan.weight_decay)
        drawn.append(dataclasses.replace(spec, **extra))
    every = [
        dataclasses.replace(s, schedule="warmup_cosine", init="orthogonal", augment="shift_flip",
                            label_smoothing=0.1, input_norm="minus_one_one", optimizer="adamw",
                            lr=0.005, weight_decay=0.01)
        for s in specs
    ]  # fmt: skip
    variants = {"original": specs, f"{cfg['name']} draws": drawn, "every knob": every}
    for group in variants.values():  # untimed warm-up
        train_models(group, data, runtime, progress=False)
    # CPU time of this process (all threads) besides wall time: on a shared machine it is far
    # less disturbed by other processes.
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    accs: dict[str, float] = {}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated: no position bias
            group = variants[name]
            t, c = time.perf_counter(), time.process_time()
            res = train_models(group, data, runtime, progress=False)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            accs[name] = statistics.mean(r.test_accuracy for r in res)
    n_drawn = sum(
        any(getattr(d, k) != getattr(s, k) for k in (*knobs, "optimizer")) for d, s in zip(drawn, specs)
    )
    print(f"task: Fashion-MNIST classes 0-4, {data['bench'].x_train.shape[0]} train images; "
          f"{args.models} × {args.arch}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.threads} thread(s), engine workers {args.workers or args.threads}, "
          f"{args.repeats} alternating runs each")  # fmt: skip
    for name, ts in times.items():
        best = min(ts) / min(times["original"])
        paired = statistics.median(t / o for t, o in zip(ts, times["original"]))
        cpu_best = min(cpu[name]) / min(cpu["original"])
        cpu_paired = statistics.median(t / o for t, o in zip(cpu[name], cpu["original"]))
        print(f"{name:>22s}: wall best {min(ts):6.2f} s, {best:.3f}× the original recipe (median "
              f"of paired runs {paired:.3f}×); CPU best {min(cpu[name]):6.2f} s, {cpu_best:.3f}× "
              f"(median {cpu_paired:.3f}×); mean test accuracy {accs[name]:.4f}")  # fmt: skip
    print(f"({n_drawn} of {len(drawn)} models drew a knob other than the original recipe's)")


if __name__ == "__main__":
    main()

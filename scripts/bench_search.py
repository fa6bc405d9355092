"""Per-query wall time and peak memory of ``python -m lps search``: embedding the zoo on every call
(``--no-index``) against reading the saved zoo index, measured in the same run, plus batch
throughput (many checkpoints in one process).

Every measurement is a fresh process (start-up included, as a user pays it); its peak resident
memory comes from the kernel's accounting of that child (``os.wait4``).

    python scripts/bench_search.py --zoo data/modelset500 --lps results/lps/search --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one process running ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{err}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", required=True, help="model set folder")
    parser.add_argument("--lps", required=True, help="LPS checkpoint folder (the index is kept beside it)")
    parser.add_argument("--queries", type=int, default=8, help="zoo models saved as query checkpoints (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; the median is shown (default 3)")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    import modelset

    ms = modelset.open(args.zoo)
    step = max(1, len(ms) // args.queries)
    ids = list(ms.metadata.index[::step][: args.queries])
    base = [sys.executable, "-m", "lps", "search", "--zoo", args.zoo, "--lps", args.lps, "-k", "5"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, mid in enumerate(ids):
            save_file(ms.state_dict(mid), os.path.join(tmp, f"q{i:03d}.safetensors"))
        one = os.path.join(tmp, "q000.safetensors")
        run([sys.executable, "-m", "lps", "index", "--zoo", args.zoo, "--lps", args.lps])  # a fresh index
        rows = {}
        for label, extra in (("embed the zoo per query (--no-index)", ["--no-index"]), ("saved zoo index", [])):
            runs = [run([*base, one, *extra]) for _ in range(args.repeats)]
            rows[label] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        batch = [run([*base, tmp]) for _ in range(args.repeats)]
        batch_seconds = statistics.median(r[0] for r in batch)
    print(f"lps search on {Path(args.zoo).name} ({len(ms)} models), LPS {args.lps}, median of {args.repeats} runs")
    print(f"{'path':40s} {'s/query':>8s} {'peak MiB':>9s}")
    for label, (seconds, mib) in rows.items():
        print(f"{label:40s} {seconds:8.2f} {mib:9.0f}")
    (old_s, old_m), (new_s, new_m) = rows.values()
    print(f"{'ratio (per-query path / index path)':40s} {old_s / new_s:8.2f} {old_m / new_m:9.2f}")
    print(f"batch: {len(ids)} checkpoints in one process with the index: {batch_seconds:.2f} s, "
          f"{batch_seconds / len(ids):.3f} s per checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-query wall time and peak memory of ``python -m lps search``: in the process (the saved zoo
index, torch imported per call) against the warm search service (``python -m lps serve``), cold
(the first query a freshly started service answers; the query itself starts nothing) and warm,
plus batch throughput (many checkpoints in one process, and through the service).

Every query is a fresh client process (start-up included, as a user pays it); its peak resident
memory is the kernel's accounting of that child (``os.wait4``). Queries are zoo models saved as
checkpoint files. Nothing is written into ``--lps`` (the index there must be up to date).

    python scripts/bench_search.py --zoo data/modelset500 --lps results/lps/search --repeats 5
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

SAVE_QUERIES = """
import sys
from safetensors.torch import save_file
import modelset
ms = modelset.open(sys.argv[1])
n = int(sys.argv[2])
for i, mid in enumerate(ms.metadata.index[:: max(1, len(ms) // n)][:n]):
    save_file(ms.state_dict(mid), f"{sys.argv[3]}/q{i:03d}.safetensors")
print(len(ms))
"""


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one process running ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{err}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def start_service(zoo: str, lps: str, sock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lps", "serve", "--zoo", zoo, "--lps", lps, "--socket", str(sock),
                             "--idle-minutes", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    while not sock.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the search service did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    return proc


def stop_service(zoo: str, sock: Path, proc: subprocess.Popen) -> float:
    """Stop the service; its peak resident MiB."""
    peak = 0.0
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    subprocess.run([sys.executable, "-m", "lps", "serve", "--zoo", zoo, "--socket", str(sock), "--stop"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    proc.wait(timeout=60)
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", required=True, help="model set folder")
    parser.add_argument("--lps", required=True, help="LPS checkpoint folder with an up-to-date zoo index")
    parser.add_argument("--queries", type=int, default=16, help="checkpoints in the batch (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per path; medians are shown (default 5)")
    args = parser.parse_args(argv)

    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        queries = Path(tmp) / "queries"
        queries.mkdir()
        # Written by a child: this process stays free of torch, so the children it forks start small
        # (a forked child's peak RSS counts its parent's pages).
        size = int(subprocess.run([sys.executable, "-c", SAVE_QUERIES, args.zoo, str(args.queries), str(queries)],
                                  check=True, capture_output=True, text=True).stdout)  # fmt: skip
        n_queries = len(list(queries.iterdir()))
        one = str(queries / "q000.safetensors")
        sock = Path(tmp) / "search.sock"
        base = [sys.executable, "-m", "lps", "search", "--zoo", args.zoo, "--lps", args.lps, "-k", "5",
                "--socket", str(sock)]  # fmt: skip

        def median(label: str, runs: list[tuple[float, float]]) -> None:
            rows[label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))

        median("in process (saved zoo index)", [run([*base, one, "--no-service"]) for _ in range(args.repeats)])
        cold, service_peak = [], []
        for _ in range(args.repeats):
            proc = start_service(args.zoo, args.lps, sock)
            cold.append(run([*base, one]))
            service_peak.append(stop_service(args.zoo, sock, proc))
        median("service, cold (its first query)", cold)
        proc = start_service(args.zoo, args.lps, sock)
        run([*base, one])
        median("service, warm", [run([*base, one]) for _ in range(args.repeats)])
        batch_service = [run([*base, str(queries)])[0] for _ in range(args.repeats)]
        service_peak.append(stop_service(args.zoo, sock, proc))
        batch_process = [run([*base, str(queries), "--no-service"])[0] for _ in range(args.repeats)]
    print(f"lps search on {Path(args.zoo).name} ({size} models), LPS {args.lps}, median of {args.repeats} runs")
    print(f"{'one query':36s} {'wall s':>7s} {'client peak MiB':>16s}")
    for label, (seconds, mib) in rows.items():
        print(f"{label:36s} {seconds:7.2f} {mib:16.0f}")
    print(f"service process peak: {statistics.median(service_peak):.0f} MiB")
    for label, runs in (("in process", batch_process), ("through the service", batch_service)):
        seconds = statistics.median(runs)
        print(f"batch of {n_queries} checkpoints {label}: {seconds:.2f} s, {n_queries / seconds:.1f} checkpoints/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

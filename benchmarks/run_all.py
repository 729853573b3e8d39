"""Run every benchmark in a fresh process and print their tables: `make bench` (or `make bench ARGS=--quick`).

Each benchmark measures its ratios side by side in one run and prints PASS/FAIL against its target;
the exit status is non-zero when any target is missed or a benchmark fails. `--quick` is a smoke run of
every code path at toy sizes: no target is judged (timings that small are noise), and only a benchmark
that crashes makes it fail."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_losses.py", "bench_matryoshka.py", "bench_gradcache.py", "bench_saha.py", "bench_negatives.py",
              "bench_image_check.py", "bench_overhead.py", "bench_eval.py", "bench_startup.py",
              "bench_cached_mnrl.py"]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    failed = []
    for name in BENCHMARKS:
        cmd = [sys.executable, str(HERE / name), *(["--quick"] if quick else [])]
        print(f"\n### {name}{' --quick' if quick else ''}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"({name}: {time.perf_counter() - start:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    if quick:
        print(f"\nsmoke run (--quick, no target judged); benchmarks that crashed: {failed or 'none'}")
    else:
        print(f"\nbenchmarks missing a target or failing: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Two builds of rnnkit on one layer case, timed in pairs of calls: for comparing a change on a
host whose speed drifts (docs/benchmarks.md, "Comparing two builds"). Not run by pytest.

    python benchmarks/ab_builds.py A_DIR B_DIR [--cell gru] [--mode training] [--T 100] [--N 64]
        [--H 512] [--dtype bfloat16] [--pairs 40] [--threads 2] [--settle 0.02]

A_DIR and B_DIR each hold an `rnnkit` package: a copy of the tree's `rnnkit/` after
`python setup.py build_ext --inplace`, one per build. One worker process per build imports its
own copy (and says which file it imported), builds the same layer from the same seed, and times
one call whenever the driver asks; the driver asks A then B, then B then A, and so on. The two
calls of a pair are milliseconds apart, so a change of the machine's speed over seconds (on a
virtual machine, one core can run at half the other's speed for a while) hits both alike, where
whole runs a minute apart do not. After each call a worker waits --settle seconds before it
answers: its OpenMP threads spin for a while after a parallel region before they sleep, and
would otherwise take a core from the other build's next call (at N = 1, where a call takes about
a millisecond, that doubled the GRU's times). Prints each build's median, the median and
quartiles of the paired differences A - B (positive: B is faster), and how many pairs B won.

The case is built as `rnnkit bench` and `bench_layers.py` build theirs (rnnkit.bench): `training`
times forward and backward (with the bench's seeded upstream gradients), `inference` a forward
under torch.no_grad().
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CELLS = ("lstm", "gru", "rnn")


def _arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a_dir", nargs="?")
    ap.add_argument("b_dir", nargs="?")
    ap.add_argument("--cell", default="gru", choices=CELLS)
    ap.add_argument("--mode", default="training", choices=["training", "inference"])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--settle", type=float, default=0.02)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is None and (args.a_dir is None or args.b_dir is None):
        ap.error("expected two folders, A_DIR and B_DIR, each holding an rnnkit package")
    for name in ("T", "N", "H", "pairs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.settle < 0:
        ap.error(f"--settle must be at least 0 seconds, got {args.settle}")
    return args


def _worker(args: argparse.Namespace) -> None:
    """Imports the rnnkit in args.worker, then answers each line on stdin with one call's
    seconds. The case is built as `rnnkit bench` builds it (rnnkit.bench: the seeded torch.nn
    module's weights, the same inputs and upstream gradients)."""
    sys.path.insert(0, os.path.abspath(args.worker))
    import torch

    import rnnkit
    from rnnkit.bench.case import Case
    from rnnkit.bench.impls import build_impl, torch_module
    from rnnkit.bench.machine import DTYPES
    from rnnkit.bench.verify import make_inputs, repeatable_call

    if args.threads:
        torch.set_num_threads(args.threads)
    where = os.path.abspath(rnnkit.__file__)
    if not where.startswith(os.path.abspath(args.worker) + os.sep):
        raise SystemExit(f"ab_builds: expected rnnkit from {args.worker}, imported {where}")
    case = Case(args.cell, args.T, args.N, args.H, args.H, dtype=args.dtype)
    dtype, seed = DTYPES[args.dtype], 0
    module = torch_module(case, seed).to(dtype)
    call = repeatable_call(build_impl("rnnkit", module, case),
                           make_inputs(case, dtype, "cpu", seed), args.mode,
                           list(module.parameters()))
    for _ in range(3):
        call()
    print(f"ready {where}", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        time.sleep(args.settle)
        print(seconds, flush=True)


def _start(folder: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", folder, "--cell", args.cell,
               "--mode", args.mode, "--T", str(args.T), "--N", str(args.N), "--H", str(args.H),
               "--dtype", args.dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    command += ["--settle", str(args.settle)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"ab_builds: the worker for {folder} did not start (said {line!r})")
    return proc, line[len("ready "):]


def _time(proc: subprocess.Popen) -> float:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main(argv=None) -> int:
    args = _arguments(argv)
    if args.worker is not None:
        _worker(args)
        return 0
    (a, a_file), (b, b_file) = _start(args.a_dir, args), _start(args.b_dir, args)
    print(f"A: {a_file}\nB: {b_file}")
    print(f"{args.cell} {args.mode} T={args.T} N={args.N} H={args.H} {args.dtype}, "
          f"{args.pairs} pairs", flush=True)
    ta, tb = [], []
    try:
        for k in range(args.pairs):
            if k % 2 == 0:
                ta.append(_time(a))
                tb.append(_time(b))
            else:
                tb.append(_time(b))
                ta.append(_time(a))
    finally:
        for proc in (a, b):
            proc.stdin.close()
            proc.wait()
    diffs = sorted((x - y) * 1e3 for x, y in zip(ta, tb))
    q1, median, q3 = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else diffs * 3
    print(f"A median {statistics.median(ta) * 1e3:.2f} ms, B median "
          f"{statistics.median(tb) * 1e3:.2f} ms")
    print(f"A - B per pair: median {median:.2f} ms (quartiles {q1:.2f}, {q3:.2f}); "
          f"B faster in {sum(d > 0 for d in diffs)} of {len(diffs)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

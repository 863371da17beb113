"""Time per step of long sequences: flat from T = 1,000 to T = 100,000 (no quadratic cost).

    PYTHONPATH=. python tools/scale_check.py [--lengths 1000 10000 100000] [--batch 8]
                                             [--hidden 32] [--threads 1] [--repeats 3]

For each layer kind, one process times forward+backward at every length (best of --repeats) and
prints microseconds per step. Exits 1 if the per-step time of the longest length passes
--max-ratio (default 3) times that of the second longest: quadratic cost would give 10 for
10,000 -> 100,000. The ratio to the shortest length is printed too but not bounded: at T = 1,000
every buffer of a call fits in the CPU caches and is reused from the allocator, while at 100,000
the buffers (hundreds of MiB) come fresh from the kernel and stream through memory, which costs a
few microseconds per step more whatever the algorithm (most visible for the Elman RNN, whose
compute per step is smallest). Also prints the peak resident memory, which grows linearly with T
(the workspace kept for backward).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch


def time_per_step(module, T: int, N: int, I: int, repeats: int) -> float:
    x = torch.randn(T, N, I, requires_grad=True)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = module(x)[0]
        out.sum().backward()
        best = min(best, time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
        x.grad = None
    return best / T


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-ratio", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import rnnkit

    print(f"forward+backward, N={args.batch}, I={args.input}, H={args.hidden}, float32, "
          f"{args.threads} thread(s), best of {args.repeats}")
    rows, failed = [], False
    for kind in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(0)
        module = getattr(rnnkit, kind)(args.input, args.hidden)
        time_per_step(module, 100, args.batch, args.input, 1)  # warm-up
        per_step = {T: time_per_step(module, T, args.batch, args.input, args.repeats)
                    for T in args.lengths}
        longest, second = sorted(args.lengths)[-1], sorted(args.lengths)[-2]
        ratio = per_step[longest] / per_step[second]
        overall = per_step[longest] / per_step[min(args.lengths)]
        failed |= ratio > args.max_ratio
        cells = "  ".join(f"T={T}: {us * 1e6:.2f} us/step" for T, us in per_step.items())
        print(f"{kind:<5} {cells}  ratio {longest}/{second}: {ratio:.2f} "
              f"({longest}/{min(args.lengths)}: {overall:.2f})", flush=True)
        rows.append({"kind": kind, "us_per_step": {str(T): v * 1e6 for T, v in per_step.items()},
                     "ratio_longest_two": ratio, "ratio_longest_shortest": overall})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB; {'FAIL' if failed else 'ok'}: ratio bound {args.max_ratio}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

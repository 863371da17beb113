"""rnnkit against torch.nn in CPU time of one thread: a comparison that survives a busy machine.

Wall-clock ratios on a 2-core machine shared with other jobs are meaningless (a team of two
threads stalls whenever either core is taken); the CPU time one thread spends is far steadier.
This is the measurement for comparing two builds of rnnkit side by side when no quiet machine is
at hand: run it alternately against each build's tree, e.g.

    for i in 1 2; do for tree in /path/to/old /path/to/new; do
        echo "$tree $(PYTHONPATH=$tree python benchmarks/bench_cputime.py)"; done; done

Prints one JSON object: per case, the median CPU milliseconds of torch.nn and of rnnkit over
interleaved repeats (inference under torch.no_grad(); fwd+bwd with the input requiring grad).

`--threads K --wall` measures wall-clock time with K threads instead (for changes to how the
threads work together, which one thread's CPU time cannot see; needs a quiet machine), and
`--only N=1` keeps the cases whose name contains that text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rnnkit

# (cell, T, N, H, mode): issue 3's shapes, and the default `rnnkit train` layer (T=64, H=384)
CASES = [("LSTM", 100, 64, 512, "inference"), ("LSTM", 100, 64, 512, "fwd+bwd"),
         ("GRU", 100, 64, 512, "fwd+bwd"), ("LSTM", 100, 1, 256, "inference"),
         ("GRU", 100, 1, 256, "inference"), ("LSTM", 64, 64, 384, "fwd+bwd")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall-clock time, not CPU time")
    parser.add_argument("--only", default="", help="keep the cases whose name contains this")
    args = parser.parse_args()
    clock = time.perf_counter if args.wall else time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": args.threads,
              "clock": "wall" if args.wall else "cpu", "cases": {}}
    for cell, T, N, H, mode in CASES:
        if args.only not in f"{cell} T={T} N={N} H={H} {mode}":
            continue
        theirs = getattr(torch.nn, cell)(H, H)
        ours = rnnkit.from_torch(theirs)
        x = torch.randn(T, N, H)

        def run(module):
            if mode == "inference":
                with torch.no_grad():
                    module(x)
            else:
                module(x.clone().requires_grad_())[0].sum().backward()

        repeats = 300 if N == 1 else 9
        for _ in range(3):
            run(theirs), run(ours)
        times = {"torch": [], "rnnkit": []}
        for _ in range(repeats):
            for name, module in (("torch", theirs), ("rnnkit", ours)):
                start = clock()
                run(module)
                times[name].append(clock() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        med["speedup"] = med["torch"] / med["rnnkit"]
        result["cases"][f"{cell} T={T} N={N} H={H} {mode}"] = med
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""1,000 forward+backward calls of each layer kind; prints resident memory before and after.

    python -m tools.leak_check [--calls 1000] [--warmup 50] [--threads 1] [--json PATH]

"Before" is measured after the warm-up calls (allocator pools and lazily loaded code settle
there), "after" once the loop is done, both after gc.collect(). Exits 1 if any kind grew by more
than --bound (default 5%). The same loop, shorter, is tests/library/test_leaks.py. Run it as a module from the source
folder, so that it finds both the tests and rnnkit.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from tests.library.test_leaks import KINDS, rss_bytes, step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--bound", type=float, default=0.05, help="allowed relative growth")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import rnnkit

    print(f"rnnkit {rnnkit.__version__} ({rnnkit.build_info()['library']}), torch "
          f"{torch.__version__}, {args.calls} calls per kind after {args.warmup} warm-up calls")
    print(f"{'kind':<10} {'RSS before':>12} {'RSS after':>12} {'growth':>8} {'seconds':>8}")
    rows, failed = [], False
    for kind, (make, shape) in KINDS.items():
        torch.manual_seed(0)
        module, x = make(), torch.randn(shape)
        packed = kind in ("LSTM", "GRU")
        for _ in range(args.warmup):
            step(module, x, packed)
        gc.collect()
        before, start = rss_bytes(), time.perf_counter()
        for _ in range(args.calls):
            step(module, x, packed)
        gc.collect()
        after, seconds = rss_bytes(), time.perf_counter() - start
        growth = (after - before) / before
        failed |= growth > args.bound
        rows.append({"kind": kind, "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
                     "growth": growth, "calls": args.calls, "seconds": seconds})
        print(f"{kind:<10} {before / 2**20:>9.1f} MiB {after / 2**20:>9.1f} MiB {growth:>7.2%} "
              f"{seconds:>8.1f}", flush=True)
    print(f"process RSS at the end: {rss_bytes() / 2**20:.1f} MiB; "
          f"{'FAIL' if failed else 'ok'}: bound {args.bound:.0%} per kind")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

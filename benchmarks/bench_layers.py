"""Whole layers, rnnkit against torch.nn, on the cases of issue 3 (float32, CPU; with --dtype
bfloat16 or float16, the same cases in that dtype against torch.nn in it, with issue 15's targets
for bfloat16). Not run by pytest.

    PYTHONPATH=. python benchmarks/bench_layers.py [--repeats 5] [--only 1,4] [--dtype bfloat16]

Per case: both implementations checked against the float64 reference on the same weights, then
interleaved repeats in one process (with the layer's matrix products alone as a third entry, the
machine's matmul rate for these shapes); the ratio torch median / rnnkit median against the
target, achieved GFLOP/s and its fraction of that rate; and before each case, each core's own
product rate before and after it (rnnkit.bench.machine.core_rates): on a virtual machine one
core can run at half the other's speed for seconds at a time, and a case with either reading
uneven is marked so. Writes
benchmarks/results/layers-<machine>-<date>.json and .md unless --no-save.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

import torch

from rnnkit.bench.case import Case, MATMUL, Settings
from dataclasses import asdict
from rnnkit.bench.machine import DTYPES, core_rates, cores_even, machine_info, machine_slug
from rnnkit.bench.report import header, markdown_report, results_dir
from rnnkit.bench.run import run_case

# (label, case, mode, torch.nn time measured when the issue was written (ms), target, stretch)
CASES = [
    ("LSTM T=100 N=64 I=H=512, fwd+bwd", Case("lstm", 100, 64, 512, 512), "training",
     505, 1.0, 1.2),
    ("GRU T=100 N=64 I=H=512, fwd+bwd", Case("gru", 100, 64, 512, 512), "training",
     586, 1.6, None),
    ("LSTM T=100 N=64 I=H=512, inference", Case("lstm", 100, 64, 512, 512), "inference",
     134, 0.95, None),
    ("LSTM T=100 N=1 I=H=256, inference", Case("lstm", 100, 1, 256, 256), "inference",
     2.25, 1.5, 2.0),
    ("GRU T=100 N=1 I=H=256, inference", Case("gru", 100, 1, 256, 256), "inference",
     5.05, 3.0, None),
    ("LSTM packed N=64 I=H=256, lengths 25-100, fwd+bwd",
     Case("lstm", 100, 64, 256, 256, min_len=25), "training", 412, 4.0, None),
    ("(same, padded to T=100: torch's padded time)", Case("lstm", 100, 64, 256, 256),
     "training", 133, None, None),
    ("LSTM 2-layer bidir T=100 N=32 I=H=256, fwd+bwd",
     Case("lstm", 100, 32, 256, 256, num_layers=2, bidirectional=True), "training",
     332, 1.2, None),
    ("GRU 2-layer bidir T=100 N=32 I=H=256, fwd+bwd",
     Case("gru", 100, 32, 256, 256, num_layers=2, bidirectional=True), "training",
     339, 1.6, None),
    # Issue 15 added this case (its bfloat16 target only); torch.nn float32 took 181 ms then.
    ("GRU T=100 N=64 I=H=512, inference", Case("gru", 100, 64, 512, 512), "inference",
     181, None, None),
]


# Issue 15's targets for bfloat16 (case number -> speed-up over torch.nn in bfloat16).
BF16_TARGETS = {1: 1.3, 2: 2.5, 3: 1.2, 4: 1.5, 5: 8.0, 6: 4.0, 10: 2.5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated case numbers (1-based)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [int(k) for k in args.only.split(",")] if args.only else range(1, len(CASES) + 1)
    meta = machine_info("cpu")
    meta["command"] = "python benchmarks/bench_layers.py " + " ".join(sys.argv[1:])
    print(header(meta), flush=True)
    rows, results = [], []
    for k in chosen:
        label, case, mode, today, target, stretch = CASES[k - 1]
        if args.dtype != "float32":
            case = dataclasses.replace(case, dtype=args.dtype)
            label, today, stretch = f"{label} ({args.dtype})", None, None
            target = BF16_TARGETS.get(k) if args.dtype == "bfloat16" else None
        settings = Settings(modes=(mode,), warmup=2, repeats=args.repeats, memory=False)
        print(f"[{k}] {label} ...", file=sys.stderr, flush=True)
        cores = core_rates(DTYPES[args.dtype])
        got = {r.impl: r for r in run_case(case, settings, ["rnnkit", "torch"])}
        cores_after = core_rates(DTYPES[args.dtype])
        results += got.values()
        ours, theirs, mm = got["rnnkit"], got["torch"], got[MATMUL]
        ratio = ours.speedup_vs_torch
        rows.append({
            "n": k, "case": label, "mode": mode, "torch_ms_in_issue": today,
            "torch_ms": theirs.median_ms, "rnnkit_ms": ours.median_ms, "ratio": ratio,
            "ratio_of_mins": None if ours.min_ms is None or theirs.min_ms is None
            else theirs.min_ms / ours.min_ms,
            "target": target, "stretch": stretch,
            "met": None if ratio is None or target is None else ratio >= target,
            "rnnkit_gflops": ours.gflops, "rnnkit_of_matmul": ours.fraction_of_matmul,
            "torch_gflops": theirs.gflops, "torch_of_matmul": theirs.fraction_of_matmul,
            "matmul_gflops": mm.gflops,
            "rnnkit_status": ours.status if ours.status == "ok" else
            f"{ours.status}: {ours.detail}",
            "torch_status": theirs.status if theirs.status == "ok" else
            f"{theirs.status}: {theirs.detail}",
            "core_gflops_before": cores, "core_gflops_after": cores_after,
            "cores_even": None if not cores else bool(cores_even(cores) and
                                                      cores_even(cores_after)),
        })
        print(_row_text(rows[-1]), flush=True)
    text = _table(rows)
    print()
    print(text)
    if not args.no_save:
        kind = "layers" if args.dtype == "float32" else f"layers-{args.dtype}"
        stem = f"{kind}-{machine_slug('cpu')}-{datetime.date.today().isoformat()}"
        path = os.path.join(results_dir(), stem)
        meta["loadavg_end"] = list(os.getloadavg())
        with open(path + ".json", "w") as f:
            json.dump({"meta": meta, "cases": rows,
                       "results": [asdict(r) for r in results]}, f, indent=1)
        with open(path + ".md", "w") as f:
            f.write(markdown_report("Layers vs torch.nn: the cases of issue 3", results, meta)
                    .replace("\n\nMedians", "\n\n## Summary\n\n" + text + "\n\n## Every timing"
                             "\n\nMedians", 1))
        print(f"wrote {path}.json and .md", file=sys.stderr)
    return 0


def _f(v, spec):
    return "-" if v is None else format(v, spec)


def _row_text(r) -> str:
    return (f"[{r['n']}] torch {_f(r['torch_ms'], '.4g')} ms, rnnkit {_f(r['rnnkit_ms'], '.4g')} "
            f"ms, ratio {_f(r['ratio'], '.2f')} (target {r['target']}); rnnkit "
            f"{_f(r['rnnkit_gflops'], '.1f')} GFLOP/s = "
            f"{_f(None if r['rnnkit_of_matmul'] is None else 100 * r['rnnkit_of_matmul'], '.0f')}%"
            f" of matmul ({_f(r['matmul_gflops'], '.1f')} GFLOP/s); each core before, after: "
            f"{_cores(r)}")


def _cores(r) -> str:
    """Each core's product rate before and after the case, e.g. "604/598, 590/612 (uneven)"."""
    if not r.get("core_gflops_before"):
        return "-"
    text = ", ".join("/".join(f"{v:.0f}" for _, v in sorted(rates.items()))
                     for rates in (r["core_gflops_before"], r["core_gflops_after"]))
    return text + ("" if r["cores_even"] else " (uneven)")


def _table(rows) -> str:
    head = ("| # | case | torch.nn in issue (ms) | torch.nn here (ms) | rnnkit (ms) | speed-up | "
            "of mins | "
            "target | met | rnnkit GFLOP/s | rnnkit of matmul | torch of matmul | matmul GFLOP/s | "
            "each core before, after (GFLOP/s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        target = "-" if r["target"] is None else f"≥ {r['target']}×" + (
            f" (stretch {r['stretch']}×)" if r["stretch"] else "")
        met = {None: "-", True: "yes", False: "no"}[r["met"]]
        status = "" if r["rnnkit_status"] == "ok" else f" ({r['rnnkit_status']})"
        lines.append(f"| {r['n']} | {r['case']}{status} | {r['torch_ms_in_issue']} | "
                     f"{_f(r['torch_ms'], '.4g')} | {_f(r['rnnkit_ms'], '.4g')} | "
                     f"{_f(r['ratio'], '.2f')}× | {_f(r.get('ratio_of_mins'), '.2f')}× | "
                     f"{target} | {met} | "
                     f"{_f(r['rnnkit_gflops'], '.0f')} | {pct(r['rnnkit_of_matmul'])} | "
                     f"{pct(r['torch_of_matmul'])} | {_f(r['matmul_gflops'], '.0f')} | "
                     f"{_cores(r)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

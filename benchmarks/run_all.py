"""Runs rnnkit bench's suites for this machine and writes the results. Not run by pytest.

    PYTHONPATH=. python benchmarks/run_all.py [--device cpu|cuda] [--suites fastrnns,packed]

Writes benchmarks/results/<machine>-<date>.json (every result, with the machine, the versions,
the load average and this command) and the same name .md (one table per suite and cell).
CPU: fastrnns, small-batch and packed for LSTM and GRU, sweep for LSTM.
CUDA: the same, plus long (float16) for LSTM and GRU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

from rnnkit.bench.case import BenchError, GPU_ONLY, Settings
from dataclasses import asdict
from rnnkit.bench.machine import check_device, machine_info, machine_slug
from rnnkit.bench.report import header, markdown_report, results_dir, table
from rnnkit.bench.run import default_impls, run_case
from rnnkit.bench.suites import SUITES, suite_cases

# most telling first: results are written after every suite, so a stopped run keeps them
PLAN = [("fastrnns", "lstm"), ("fastrnns", "gru"), ("packed", "lstm"), ("small-batch", "lstm"),
        ("sweep", "lstm"), ("packed", "gru"), ("small-batch", "gru"), ("long", "lstm"),
        ("long", "gru")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="default: cuda when a GPU is visible, else cpu")
    ap.add_argument("--suites", default=None, help="comma-separated (default: all for the device)")
    ap.add_argument("--cells", default=None, help="comma-separated (default: the plan's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="file stem (default: results/<machine>-<date>)")
    args = ap.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_device(device)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = args.suites.split(",") if args.suites else list(SUITES)
    for s in suites:
        if s not in SUITES:
            print(f"error: unknown suite {s!r}; valid: {', '.join(SUITES)}", file=sys.stderr)
            return 1
    plan = [(s, c) for s, c in PLAN if s in suites
            and (args.cells is None or c in args.cells.split(","))
            and (device == "cuda" or not SUITES[s].gpu_only)]
    meta = machine_info(device)
    meta["command"] = "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
    stem = args.out or os.path.join(
        results_dir(), f"{machine_slug(device)}-{datetime.date.today().isoformat()}")
    print(header(meta), flush=True)
    sections, everything = [], []
    for suite_name, cell in plan:
        suite, cases = suite_cases(suite_name, cell, device)
        impls = [i for i in (suite.impls or default_impls(device))
                 if device == "cuda" or i not in GPU_ONLY]
        settings = Settings(repeats=suite.repeats, impls=impls)
        t0 = time.time()
        results = []
        for case in cases:
            print(f"{suite_name} {case.label} ...", file=sys.stderr, flush=True)
            results += run_case(case, settings, impls,
                                  log=lambda m: print("  " + m, file=sys.stderr, flush=True))
        seconds = time.time() - t0
        load = os.getloadavg()[0]
        title = f"{suite_name}, {cell} ({suite.about}): {seconds:.0f} s, load average {load:.2f}"
        print(f"\n## {title}\n{table(results)}", flush=True)
        sections.append(f"## {title}\n\nEquivalent command: `rnnkit bench --suite {suite_name} "
                        f"--cell {cell} --device {device}`\n\n{table(results, markdown=True)}\n")
        everything += [dict(asdict(r), suite=suite_name, suite_seconds=seconds,
                            loadavg_after=load) for r in results]
        _write(stem, meta, everything, sections)  # after every suite, so a stop keeps the rest
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


def _write(stem, meta, everything, sections) -> None:
    meta = dict(meta, loadavg_end=list(os.getloadavg()))
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": everything}, f, indent=1)
        f.write("\n")
    head = markdown_report(f"rnnkit bench suites, {meta['device']}", [], meta)
    head = head.split("\n| case")[0].rstrip()  # the page head without the empty table
    with open(stem + ".md", "w") as f:
        f.write(head + "\n\n" + "\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())

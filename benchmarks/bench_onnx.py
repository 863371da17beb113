"""Inference of one layer through onnxruntime (rnnkit.onnx's export, and torch.onnx's own export of
the torch.nn layer) beside rnnkit and torch.nn, float32, CPU (issue 18). Information, no target.
Not run by pytest.

    PYTHONPATH=. python benchmarks/bench_onnx.py [--cell lstm --batch 1 --hidden 256 --steps 100]
                                                 [--repeats 7 --threads 2 --no-save]

Every implementation is first checked against torch.nn in float64 on the same weights (to 1e-4;
a wrong one is reported, not timed); then interleaved repeats in one process, medians and
min-max. onnxruntime runs with as many intra-op threads as torch. Writes
benchmarks/results/onnx-<machine>-<date>.json and .md unless --no-save.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
from typing import Callable

import numpy as np
import torch

import rnnkit
import rnnkit.onnx as rko
from rnnkit.bench.machine import machine_info, machine_slug
from rnnkit.bench.report import header
from rnnkit.bench.timing import interleaved, summarize

CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
TOLERANCE = 1e-4


def _session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads would otherwise spin and take the cores from the implementations
    # timed between its calls in this process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _ort_runner(path: str, x: torch.Tensor, threads: int) -> Callable[[], list[np.ndarray]]:
    session = _session(path, threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def impls(cell: str, theirs: torch.nn.Module, x: torch.Tensor, folder: str, threads: int
          ) -> dict[str, Callable[[], object]]:
    """name -> a call that runs the layer on x (all on theirs' weights)."""
    ours = rnnkit.from_torch(theirs).eval()
    ours_path = os.path.join(folder, "rnnkit.onnx")
    rko.export(ours, (x,), ours_path)
    torch_path = os.path.join(folder, "torch.onnx")
    # a copy: torch's export leaves the module it traces on a slower path (measured 100x slower)
    torch.onnx.export(copy.deepcopy(theirs), (x,), torch_path, dynamo=True, verbose=False)

    def no_grad(module):
        def call():
            with torch.no_grad():
                return module(x)
        return call

    return {"torch.nn": no_grad(theirs), "rnnkit": no_grad(ours),
            "onnxruntime (rnnkit.onnx export)": _ort_runner(ours_path, x, threads),
            "onnxruntime (torch.onnx export of torch.nn)": _ort_runner(torch_path, x, threads)}


def _first_output(result) -> torch.Tensor:
    out = result[0]
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256, help="input and hidden size")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    import onnxruntime

    meta = machine_info("cpu")
    meta["onnxruntime"] = onnxruntime.__version__
    meta["command"] = "python benchmarks/bench_onnx.py " + " ".join(sys.argv[1:])
    print(header(meta) + f"; onnxruntime {onnxruntime.__version__}", flush=True)
    label = (f"{args.cell.upper()} T={args.steps} N={args.batch} I=H={args.hidden}, inference, "
             "float32")

    torch.manual_seed(0)
    theirs = CELLS[args.cell](args.hidden, args.hidden).eval()
    x = torch.randn(args.steps, args.batch, args.hidden)
    with torch.no_grad():
        oracle = copy.deepcopy(theirs).double()(x.double())[0]
    with tempfile.TemporaryDirectory() as folder:
        runs = impls(args.cell, theirs, x, folder, threads)
        rows, timed = [], {}
        for name, run in runs.items():
            err = (_first_output(run()).double() - oracle).abs().max().item()
            rows.append({"impl": name, "max_abs_err_vs_float64": err})
            if err <= TOLERANCE:
                timed[name] = run
            else:
                rows[-1]["status"] = f"wrong: max abs error {err:.3g} > {TOLERANCE}, not timed"
        samples = interleaved({n: (lambda r=r: r() and None) for n, r in timed.items()},
                                repeats=args.repeats)
    torch_median = summarize(samples["torch.nn"][0])["median_ms"] if "torch.nn" in samples \
        else None
    for row in rows:
        if row["impl"] in samples:
            row.update(summarize(samples[row["impl"]][0]))
            row["status"] = "ok"
            row["vs_torch"] = None if torch_median is None else torch_median / row["median_ms"]
    text = _table(label, rows)
    print(text)
    if not args.no_save:
        meta["loadavg_end"] = list(os.getloadavg())
        stem = f"onnx-{machine_slug('cpu')}-{datetime.date.today().isoformat()}"
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", stem)
        with open(path + ".json", "w") as f:
            json.dump({"meta": meta, "case": label, "rows": rows}, f, indent=1)
        with open(path + ".md", "w") as f:
            f.write(f"# onnxruntime beside rnnkit and torch.nn\n\n- command: `{meta['command']}`\n"
                    f"- {header(meta)[2:]}; onnxruntime {meta['onnxruntime']}\n"
                    f"- load average at end: {meta['loadavg_end'][0]:.2f}\n\n{text}\n")
        print(f"wrote {path}.json and .md", file=sys.stderr)
    return 0


def _table(label: str, rows: list[dict]) -> str:
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{label}; medians of interleaved repeats, torch.nn's median / each one's", "",
             "| implementation | median (ms) | min-max (ms) | vs torch.nn | max abs error vs "
             "float64 |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        status = "" if r.get("status") == "ok" else f" ({r.get('status')})"
        lines.append(f"| {r['impl']}{status} | {f(r.get('median_ms'), '.4g')} | "
                     f"{f(r.get('min_ms'), '.4g')}-{f(r.get('max_ms'), '.4g')} | "
                     f"{f(r.get('vs_torch'), '.2f')}× | {r['max_abs_err_vs_float64']:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

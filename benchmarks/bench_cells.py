"""One cell step, forward and forward+backward: rnnkit's fused cells against torch.nn's cells and
rnnkit.reference (issue 2). Not run by pytest.

    PYTHONPATH=. python benchmarks/bench_cells.py [--batch 64 --size 512 --repeats 15]

Each implementation is checked against torch.nn's cell on the same weights before timing (a
wrong one is reported, not timed); then interleaved repeats, medians and min-max, ratios vs torch.
Writes benchmarks/results/cells-<machine>-<date>.json and .md unless --no-save.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

import rnnkit
from rnnkit.bench.impls import _share_parameters
from rnnkit.bench.machine import machine_info, machine_slug
from rnnkit.bench.report import header, results_dir
from rnnkit.bench.timing import interleaved, summarize
from rnnkit import reference as R

TORCH_CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}
RNNKIT_CELLS = {"lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "rnn": rnnkit.RNNCell}
REF_STEPS = {"lstm": R.lstm_cell, "gru": R.gru_cell, "rnn": R.rnn_cell}


def impls(cell: str, theirs: torch.nn.Module):
    """name -> step(x, states) -> tuple of new states, all on theirs' parameters."""
    ours = rnnkit.from_torch(theirs)
    _share_parameters(ours, theirs)
    p = (theirs.weight_ih, theirs.weight_hh, theirs.bias_ih, theirs.bias_hh)

    def module_step(m):
        if cell == "lstm":
            return lambda x, s: tuple(m(x, (s[0], s[1])))
        return lambda x, s: (m(x, s[0]),)

    ref = REF_STEPS[cell]
    if cell == "lstm":
        ref_step = lambda x, s: ref(x, s[0], s[1], *p)  # noqa: E731
    else:
        ref_step = lambda x, s: (ref(x, s[0], *p),)  # noqa: E731
    return {"rnnkit": module_step(ours), "torch": module_step(theirs), "reference": ref_step}


def runner(step, x, states, grads, params, mode):
    if mode == "forward":
        def call():
            with torch.no_grad():
                step(x, states)
        return call
    leaves = [x.detach().requires_grad_(), *[s.detach().requires_grad_() for s in states]]

    def call():
        for t in (*leaves, *params):
            t.grad = None
        out = step(leaves[0], leaves[1:])
        torch.autograd.backward(out, grads)

    return call


def results_of(step, x, states, grads, params):
    leaves = [x.detach().requires_grad_(), *[s.detach().requires_grad_() for s in states]]
    for t in params:
        t.grad = None
    out = step(leaves[0], leaves[1:])
    torch.autograd.backward(out, grads)
    return [o.detach().clone() for o in out] + [t.grad.clone() for t in (*leaves, *params)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="input and hidden size")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = machine_info("cpu")
    meta["command"] = "python benchmarks/bench_cells.py " + " ".join(sys.argv[1:])
    print(header(meta))
    rows = []
    for cell in args.cells.split(","):
        torch.manual_seed(0)
        theirs = TORCH_CELLS[cell](args.size, args.size)
        params = list(theirs.parameters())
        n, h = args.batch, args.size
        x = torch.randn(n, h)
        states = [torch.randn(n, h) for _ in range(2 if cell == "lstm" else 1)]
        grads = [torch.randn(n, h) for _ in states]
        steps = impls(cell, theirs)
        want = results_of(steps["torch"], x, states, grads, params)
        ok = {}
        for name, step in steps.items():
            got = results_of(step, x, states, grads, params)
            err = max(((g - w).abs().max() / (1 + w.abs().max())).item() for g, w in zip(got, want))
            ok[name] = err < 1e-4
            if not ok[name]:
                print(f"{cell} {name}: WRONG (max rel. error {err:.3g} vs torch.nn); not timed")
        for mode in ("forward", "forward+backward"):
            fns = {name: runner(step, x, states, grads, params, mode)
                   for name, step in steps.items() if ok[name]}
            timed = interleaved(fns, "cpu", warmup=3, repeats=args.repeats, min_sample_s=0.02)
            med = {name: summarize(s)["median_ms"] for name, (s, _) in timed.items()}
            low = {name: min(s) * 1000 for name, (s, _) in timed.items()}
            for name, (s, number) in timed.items():
                summary = summarize(s)
                rows.append({"cell": cell, "mode": mode, "impl": name, **summary,
                             "calls_per_sample": number,
                             "speedup_vs_torch": med["torch"] / summary["median_ms"]
                             if "torch" in med else None,
                             "speedup_of_mins": low["torch"] / low[name] if "torch" in low
                             else None})
    head = (f"{'cell':<5} {'mode':<17} {'impl':<10} {'median us':>10} {'min-max us':>17} "
            f"{'vs torch':>9} {'(of mins)':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = "{:.0f}-{:.0f}".format(1000 * r["min_ms"], 1000 * r["max_ms"])
        lines.append(f"{r['cell']:<5} {r['mode']:<17} {r['impl']:<10} "
                     f"{1000 * r['median_ms']:>10.1f} {spread:>17} "
                     f"{r['speedup_vs_torch'] or 0:>8.2f}x {r['speedup_of_mins'] or 0:>8.2f}x")
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        stem = f"cells-{machine_slug('cpu')}-{datetime.date.today().isoformat()}"
        path = os.path.join(results_dir(), stem)
        with open(path + ".json", "w") as f:
            meta["loadavg_end"] = list(os.getloadavg())
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        with open(path + ".md", "w") as f:
            f.write(f"# One cell step, N={args.batch}, I=H={args.size}, float32, CPU\n\n"
                    f"- command: `{meta['command']}`\n- date (UTC): {meta['date_utc']}\n"
                    f"- machine: {meta['cpu']}, {meta['threads']} threads; load average at start "
                    f"{', '.join(f'{v:.2f}' for v in meta.get('loadavg_1_5_15', []))}, at end "
                    f"{', '.join(f'{v:.2f}' for v in meta['loadavg_end'])}\n"
                    f"- versions: torch {meta['torch']}, rnnkit {meta['rnnkit']}\n\n"
                    f"Medians of interleaved samples (each at least 20 ms of calls); `vs torch`"
                    f" is torch's median over this one's, `(of mins)` the same for the fastest "
                    f"sample, less hurt by a busy machine.\n\n```\n{text}\n```\n")
        print(f"wrote {path}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

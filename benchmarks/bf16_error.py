"""How the bfloat16 (or float16) error grows with the sequence length: rnnkit and torch.nn in the
reduced dtype against torch.nn in float64, same weights and inputs, for LSTM, GRU and RNN.

Per cell and T: the largest absolute error of the output, of h_n, of the input gradient and of
the gradient of weight_hh_l0 (the one that sums over every step), for a loss sum(output * seed).
Writes benchmarks/results/bf16-error-<date>.json and .md unless --no-save.

    PYTHONPATH=. python benchmarks/bf16_error.py [--dtype bfloat16] [--lengths 10,100,1000]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform

import torch

import rnnkit

N, I, H = 8, 32, 64


def _run(module, dtype, x, h0, c0, seed_out):
    xs = x.detach().clone().to(dtype).requires_grad_()
    hx = (h0.to(dtype), c0.to(dtype)) if c0 is not None else h0.to(dtype)
    out, hn = module(xs, hx)
    hn = hn[0] if isinstance(hn, tuple) else hn
    (out.double() * seed_out).sum().backward()
    w = dict(module.named_parameters())["weight_hh_l0"]
    return {"output": out.detach().double(), "h_n": hn.detach().double(),
            "grad input": xs.grad.double(), "grad weight_hh": w.grad.double()}


def errors(kind: str, T: int, dtype: torch.dtype, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    ref = getattr(torch.nn, kind)(I, H).double()
    x = torch.randn(T, N, I, dtype=torch.float64)
    h0 = torch.randn(1, N, H, dtype=torch.float64)
    c0 = torch.randn(1, N, H, dtype=torch.float64) if kind == "LSTM" else None
    seed_out = torch.randn(T, N, H, dtype=torch.float64)
    want = _run(ref, torch.float64, x, h0, c0, seed_out)
    theirs = _run(copy.deepcopy(ref).to(dtype), dtype, x, h0, c0, seed_out)
    ours = _run(rnnkit.from_torch(ref).to(dtype), dtype, x, h0, c0, seed_out)
    return {k: {"rnnkit": float((ours[k] - w).abs().max()),
                "torch": float((theirs[k] - w).abs().max()),
                "scale": float(w.abs().max())} for k, w in want.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--lengths", default="10,100,1000")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    lengths = [int(t) for t in args.lengths.split(",")]
    rows = []
    for kind in ("LSTM", "GRU", "RNN"):
        for T in lengths:
            e = errors(kind, T, dtype)
            rows.append({"cell": kind, "T": T, "errors": e})
            print(kind, T, "  ".join(f"{k}: {v['rnnkit']:.3g} vs {v['torch']:.3g}"
                                     for k, v in e.items()), flush=True)
    keys = list(rows[0]["errors"])
    lines = [(f"Largest absolute error against float64, {args.dtype}, N={N} I={I} H={H}: "
              "rnnkit / torch.nn (scale: largest |float64 value|)."), "",
             "| cell | T | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{v['rnnkit']:.2g} / {v['torch']:.2g} (scale {v['scale']:.2g})"
                 for v in r["errors"].values()]
        lines.append(f"| {r['cell']} | {r['T']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        day = datetime.date.today().isoformat()
        meta = {"date": day, "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "dtype": args.dtype,
                "cpu_bf16_path": rnnkit.build_info()["cpu_bf16_path"],
                "command": f"python benchmarks/bf16_error.py --dtype {args.dtype} "
                           f"--lengths {args.lengths}"}
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           f"{args.dtype}-error-{day}")
        with open(out + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(out + ".md", "w") as f:
            f.write(f"# {args.dtype} error against float64 by sequence length\n\n"
                    f"{json.dumps(meta)}\n\n{text}\n")
        print("wrote", out + ".json and .md")


if __name__ == "__main__":
    main()

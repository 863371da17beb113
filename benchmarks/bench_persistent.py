"""GPU timings of the persistent CUDA loops (RNNKIT_CUDA_PERSISTENT=1), in the three variants of its
kernels (RNNKIT_CUDA_PERSISTENT_VARIANT=wide, the default; basic; mma, the step's product on tensor
cores for float16 and bfloat16), against rnnkit's general loop (RNNKIT_CUDA_PERSISTENT=0) and
torch.nn (cuDNN), with CUDA events: issue 17's cases.

    python -m benchmarks.bench_persistent --out-dir RESULTS_DIR   (from the source folder)

Cases:
  1. LSTM and GRU, T=1024 N=16 I=H=768, float16 and bfloat16: persistent, general, cuDNN;
     forward (no grad) and forward+backward.
  2. LSTM T=100 N=64 I=H=512 float32 (TF32 off): persistent, general, cuDNN with TF32 off.
  3. LSTM T=256 float32 at small batches (N in {1, 4}, H in {256, 1024}), persistent and
     general only: what the rule of RNNKIT_CUDA_PERSISTENT=auto, half precision only so far,
     would need to cover float32.
  4. Persistent vs general, LSTM, T=256, I=H, N in {1, 4, 16, 64} x H in {256, 512, 768, 1024}
     (--dtype, default float16), forward and forward+backward, and whether auto takes the
     persistent loop there.
Each timing is the median of --iters runs after --warmup runs, in milliseconds. Every persistent
row records which loop really ran (rnnkit._C.persistent_last()) and the largest difference of its
output from the general loop's. Writes persistent.json and persistent.md into --out-dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

import rnnkit
from benchmarks.bench_gpu import time_ms
from rnnkit import _C

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# name -> (RNNKIT_CUDA_PERSISTENT, RNNKIT_CUDA_PERSISTENT_VARIANT)
PATHS = {"general": ("0", "wide"), "persistent": ("1", "wide"), "persistent-basic": ("1", "basic"),
         "persistent-mma": ("1", "mma")}


def set_path(name: str) -> None:
    os.environ["RNNKIT_CUDA_PERSISTENT"], os.environ["RNNKIT_CUDA_PERSISTENT_VARIANT"] = PATHS[name]


def closures(module, x, g):
    """(forward without grad, forward+backward) of one module on input x, output seed g."""
    params = list(module.parameters())

    def fwd():
        with torch.no_grad():
            return module(x)[0]

    def fwd_bwd():
        out = module(x)[0]
        torch.autograd.grad(out, params + [x], g)

    return fwd, fwd_bwd


def bench_case(mode, T, N, H, dtype, args, with_cudnn=True):
    """Rows for one shape: persistent and general rnnkit loops (and cuDNN), fwd and fwd+bwd;
    without the mma variant under --skip-mma."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, mode)(H, H).to("cuda", dtype)
    ours = rnnkit.from_torch(theirs)
    x = torch.randn(T, N, H, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(T, N, H, device="cuda", dtype=dtype)
    base = dict(mode=mode, T=T, N=N, I=H, H=H, dtype=str(dtype).replace("torch.", ""))
    rows = []
    outputs = {}
    for name in PATHS:
        if args.skip_mma and name == "persistent-mma":
            continue
        set_path(name)
        fwd, fwd_bwd = closures(ours, x, g)
        outputs[name] = fwd().float()
        ran = _C.persistent_last()[0]
        row = dict(base, impl=name, fwd_ms=time_ms(fwd, args.warmup, args.iters))
        row["fwd_bwd_ms"] = time_ms(fwd_bwd, args.warmup, args.iters)
        row["ran"] = [ran, _C.persistent_last()[1]]
        rows.append(row)
    set_path("general")
    for row in rows[1:]:
        row["max_abs_diff_vs_general"] = (outputs[row["impl"]] - outputs["general"]).abs().max().item()
    rows[1]["auto_takes_persistent"] = _C.persistent_auto(H, N, x.element_size())
    if with_cudnn:
        fwd, fwd_bwd = closures(theirs, x, g)
        rows.append(dict(base, impl="cudnn", fwd_ms=time_ms(fwd, args.warmup, args.iters),
                         fwd_bwd_ms=time_ms(fwd_bwd, args.warmup, args.iters)))
    for r in rows:
        extra = f"  ran {r['ran']}" if "ran" in r else ""
        extra += f"  diff {r['max_abs_diff_vs_general']:.3g}" if "max_abs_diff_vs_general" in r else ""
        print(f"{mode} T={T} N={N} H={H} {base['dtype']:9s} {r['impl']:16s} "
              f"fwd {r['fwd_ms']:8.3f} ms  fwd+bwd {r['fwd_bwd_ms']:8.3f} ms{extra}", flush=True)
    return rows


def markdown(report) -> str:
    lines = [f"# Persistent loops on {report['gpu']}, {report['date']}", "",
             f"torch {report['torch']}, CUDA {report['cuda']}, cuDNN {report['cudnn']}; median of "
             f"{report['iters']} after {report['warmup']} warm-up runs, ms.", "",
             "## Issue 17's cases", "",
             "| case | persistent fwd | basic fwd | mma fwd | general fwd | cuDNN fwd | persistent fwd+bwd | basic fwd+bwd | mma fwd+bwd | general fwd+bwd | cuDNN fwd+bwd | persistent ran | mma ran |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cases = {}
    for r in report["cases"]:
        cases.setdefault((r["mode"], r["T"], r["N"], r["H"], r["dtype"]), {})[r["impl"]] = r
    for (mode, T, N, H, dt), impls in cases.items():
        def cell(impl, key):
            return f"{impls[impl][key]:.3f}" if impl in impls else ""
        p, m = impls.get("persistent", {}), impls.get("persistent-mma", {})
        lines.append(f"| {mode} T={T} N={N} H={H} {dt} | {cell('persistent', 'fwd_ms')} | "
                     f"{cell('persistent-basic', 'fwd_ms')} | {cell('persistent-mma', 'fwd_ms')} | "
                     f"{cell('general', 'fwd_ms')} | {cell('cudnn', 'fwd_ms')} | "
                     f"{cell('persistent', 'fwd_bwd_ms')} | {cell('persistent-basic', 'fwd_bwd_ms')} | "
                     f"{cell('persistent-mma', 'fwd_bwd_ms')} | {cell('general', 'fwd_bwd_ms')} | "
                     f"{cell('cudnn', 'fwd_bwd_ms')} | {' / '.join(p.get('ran', []))} | "
                     f"{' / '.join(m.get('ran', []))} |")
    lines += ["", f"## Persistent / general, LSTM T={report['grid_T']}, {report['grid_dtype']}"
              " (ratio below 1: the persistent loop is faster; wide variant, then basic in"
              " brackets, then mma in square brackets; **auto** where RNNKIT_CUDA_PERSISTENT=auto"
              " takes the persistent loop)",
              "",
              "| N \\ H | " + " | ".join(str(h) for h in report["grid_H"]) + " |",
              "|---|" + "---|" * len(report["grid_H"])]
    grid = {}
    for r in report["grid"]:
        grid.setdefault((r["N"], r["H"]), {})[r["impl"]] = r
    for N in report["grid_N"]:
        cells = []
        for H in report["grid_H"]:
            c = grid.get((N, H), {})
            if "persistent" in c and "general" in c:
                p, q, b = c["persistent"], c["general"], c.get("persistent-basic")
                m = c.get("persistent-mma")
                text = (f"fwd {p['fwd_ms']:.2f}/{q['fwd_ms']:.2f} = {p['fwd_ms'] / q['fwd_ms']:.2f}"
                        + (f" ({b['fwd_ms'] / q['fwd_ms']:.2f})" if b else "")
                        + (f" [{m['fwd_ms'] / q['fwd_ms']:.2f}]" if m else "")
                        + f"; f+b {p['fwd_bwd_ms']:.2f}/{q['fwd_bwd_ms']:.2f} = "
                        f"{p['fwd_bwd_ms'] / q['fwd_bwd_ms']:.2f}"
                        + (f" ({b['fwd_bwd_ms'] / q['fwd_bwd_ms']:.2f})" if b else "")
                        + (f" [{m['fwd_bwd_ms'] / q['fwd_bwd_ms']:.2f}]" if m else ""))
                text += "" if p["ran"] == ["persistent", "persistent"] else f" (ran {p['ran']})"
                cells.append(("**auto** " if p.get("auto_takes_persistent") else "") + text)
            else:
                cells.append("")
        lines.append(f"| {N} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="of the N x H grid")
    ap.add_argument("--quick", action="store_true", help="T divided by 8, for a smoke run")
    ap.add_argument("--skip-mma", action="store_true",
                    help="leave out the mma variant (gpu_persistent.sh does when its tests "
                         "failed: a faulting kernel would end the whole process)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_persistent: no GPU visible")
    if "cuda" not in rnnkit.build_info()["backends"]:
        sys.exit("bench_persistent: rnnkit was built without CUDA kernels (RNNKIT_CUDA=1)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    scale = 8 if args.quick else 1
    started = time.time()
    cases = []
    for mode in ("LSTM", "GRU"):
        for dtype in (torch.float16, torch.bfloat16):
            cases += bench_case(mode, 1024 // scale, 16, 768, dtype, args)
    cases += bench_case("LSTM", 100 // scale, 64, 512, torch.float32, args)
    for N in (1, 4):
        for H in (256, 1024):
            cases += bench_case("LSTM", 256 // scale, N, H, torch.float32, args, with_cudnn=False)
    grid_N, grid_H, grid_T = [1, 4, 16, 64], [256, 512, 768, 1024], 256 // scale
    grid = []
    for N in grid_N:
        for H in grid_H:
            grid += bench_case("LSTM", grid_T, N, H, DTYPES[args.dtype], args, with_cudnn=False)
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "tf32": False,
        "rnnkit": rnnkit.build_info(), "warmup": args.warmup, "iters": args.iters,
        "quick": args.quick, "seconds": round(time.time() - started, 1),
        "cases": cases, "grid": grid, "grid_N": grid_N, "grid_H": grid_H, "grid_T": grid_T,
        "grid_dtype": args.dtype, "skip_mma": args.skip_mma,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "persistent.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out_dir / "persistent.md").write_text(md)
    print(md)
    print(f"wrote {args.out_dir / 'persistent.json'} and persistent.md ({report['seconds']} s)")


if __name__ == "__main__":
    main()

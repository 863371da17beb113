"""The per-step matrix products of a recurrent layer: plain sgemm (torch.mm) against MKL's packed
product (cblas_sgemm_pack once, cblas_sgemm_compute per step), which rnnkit's CPU kernels use for
those products (csrc/cpu/blas.h, PackedB). Then the input projection of an inference pass, which
the kernels run in chunks of rows (ProjectionChunks, csrc/common/plan.h): its rate by chunk size.

Calls MKL through ctypes on torch's own CPU library, so it measures exactly the routines the
kernels call; interleaved repeats, best and median GFLOP/s of each, and their ratio.

    PYTHONPATH=. python benchmarks/bench_blas.py [--repeats 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROW_MAJOR, NO_TRANS, TRANS, B_MATRIX, PACKED = 101, 111, 112, 162, 151

# (label, M, N, K, B transposed): C[M, N] = A[M, K] op(B)
SHAPES = [
    ("forward step, N=64 H=512 (h W_hh^T)", 64, 2048, 512, True),
    ("backward step, N=64 H=512 (dgates W_hh)", 64, 512, 2048, False),
    ("forward step, N=64 H=384", 64, 1536, 384, True),
    ("backward step, N=64 H=384", 64, 384, 1536, False),
    ("forward step, N=32 H=256", 32, 1024, 256, True),
    ("forward step, N=32 H=256 GRU (3H)", 32, 768, 256, True),
]


def mkl():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    for name in ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute"):
        if not hasattr(lib, name):
            raise SystemExit(f"torch's CPU library does not export {name}: no MKL packed sgemm "
                             "on this build (rnnkit's kernels then use sgemm for every product)")
    lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    return lib


def measure(lib, M, N, K, trans_b, repeats):
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    f = ctypes.c_float
    a = torch.randn(M, K)
    w = torch.randn(N, K) if trans_b else torch.randn(K, N)
    packed = torch.empty(lib.cblas_sgemm_pack_get_size(B_MATRIX, M, N, K) // 4 + 16)
    lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, TRANS if trans_b else NO_TRANS, M, N, K, f(1.0),
                         ptr(w), K if trans_b else N, ptr(packed))
    c_mm, c_packed = torch.empty(M, N), torch.empty(M, N)
    b = w.t() if trans_b else w

    def plain():
        torch.mm(a, b, out=c_mm)

    def packed_product():
        lib.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, ptr(a), K, ptr(packed), K,
                                f(0.0), ptr(c_packed), N)

    plain(), packed_product()
    diff = (c_mm - c_packed).abs().max().item()
    times = {"sgemm": [], "packed": []}
    for _ in range(repeats):
        for name, fn in (("sgemm", plain), ("packed", packed_product)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    flops = 2 * M * N * K
    row = {"M": M, "N": N, "K": K, "max_abs_diff": diff}
    for name, ts in times.items():
        row[f"{name}_best_gflops"] = flops / min(ts) / 1e9
        row[f"{name}_median_gflops"] = flops / statistics.median(ts) / 1e9
    row["speedup_median"] = statistics.median(times["sgemm"]) / statistics.median(times["packed"])
    return row


# The input projection x w_ih^T of a whole layer (T=100, N=64), rows P x features I -> gates G
PROJECTIONS = [("LSTM H=512", 6400, 512, 2048), ("LSTM H=256", 6400, 256, 1024)]
CHUNK_ROWS = (256, 512, 1024, 6400)


def measure_chunks(P, I, G, repeats):
    """GFLOP/s (median) of the projection done in chunks of each size of CHUNK_ROWS rows."""
    x, w, out = torch.randn(P, I), torch.randn(G, I), torch.empty(P, G)

    def chunked(rows):
        def run():
            for r in range(0, P, rows):
                torch.mm(x[r:r + rows], w.t(), out=out[r:r + rows])
        return run

    runs = {rows: chunked(rows) for rows in CHUNK_ROWS}
    times = {rows: [] for rows in CHUNK_ROWS}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for rows, run in runs.items():
            start = time.perf_counter()
            run()
            times[rows].append(time.perf_counter() - start)
    return {rows: 2 * P * I * G / statistics.median(ts) / 1e9 for rows, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1000)
    p.add_argument("--projection-repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="folder for a JSON and a Markdown table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lib = mkl()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}; "
              f"{args.repeats} interleaved repeats")
    print(header)
    lines = ["| product | M x N x K | sgemm GFLOP/s (median) | packed GFLOP/s (median) | "
             "speed-up (median) |", "|---|---|---|---|---|"]
    rows = []
    for label, M, N, K, trans_b in SHAPES:
        r = measure(lib, M, N, K, trans_b, args.repeats)
        r["label"] = label
        rows.append(r)
        lines.append(f"| {label} | {M} x {N} x {K} | {r['sgemm_median_gflops']:.0f} | "
                     f"{r['packed_median_gflops']:.0f} | {r['speedup_median']:.2f}x |")
        print(lines[-1], flush=True)
    chunk_lines = ["| projection | P x G x I | " + " | ".join(
        f"{r} rows" if r < 6400 else "whole" for r in CHUNK_ROWS) + " |",
        "|---|---|" + "---|" * len(CHUNK_ROWS)]
    for label, P, I, G in PROJECTIONS:
        rates = measure_chunks(P, I, G, args.projection_repeats)
        rows.append({"label": f"projection {label}", "P": P, "I": I, "G": G,
                     "chunk_median_gflops": rates})
        chunk_lines.append(f"| {label} | {P} x {G} x {I} | "
                           + " | ".join(f"{rates[r]:.0f}" for r in CHUNK_ROWS) + " |")
        print(chunk_lines[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"blas-{time.strftime('%Y-%m-%d')}"
        stem.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(
            f"# Per-step products: sgemm vs MKL packed sgemm\n\n{header}\n\n"
            "Command: `PYTHONPATH=. python benchmarks/bench_blas.py --out benchmarks/results`\n\n"
            + "\n".join(lines) + "\n\n## Inference input projection by chunk size, GFLOP/s (median)\n\n"
            + "\n".join(chunk_lines) + "\n")


if __name__ == "__main__":
    main()

"""The candidate products for rnnkit's bfloat16 (and float16) CPU kernels, at the shapes of one
time step and of the whole-sequence input projection: bf16 inputs, float32 result (what the
kernels want: gate pre-activations in float32, accumulated onto the input projection, beta = 1).

Candidates (GFLOP/s, 2 M N K / time):
  mm_bf16         torch.mm in bf16 -> bf16 (oneDNN), the rate to beat; its output is rounded
  sgemm_f32       torch.mm in float32 (MKL sgemm): the float path the kernels use for float32
  mkl_bf16f32     MKL's cblas_gemm_bf16bf16f32 (raw pointers, float32 C, beta = 1)
  mkl_f16f32      MKL's cblas_gemm_f16f16f32 (float16 inputs)
  widen_sgemm     what rnnkit's "f32" path does per product: A widened from bf16 to float32,
                  B widened once beforehand (not timed), then sgemm with beta = 1
  mm_bf16_add     torch.mm in bf16 (oneDNN) and the rounded result added onto the float32 C
  reordered_bf16  torch.ops.mkldnn._linear_pointwise on a weight reordered once by
                  torch.ops.mkldnn._reorder_linear_weight (bf16 -> bf16; what rnnkit's `onednn`
                  path does for the per-step products), plus the add onto the float32 C
  rnnkit          rnnkit's own product on the path this process chose (rnnkit_testing::
                  weight_product, csrc/cpu/weights.h; AMX tiles where the CPU has them), the
                  weight prepared once (not timed), float32 C, beta = 1
  onednn_bf16f32  at::native::mkldnn_matmul with a float32 result: torch refuses it (it wants
                  the result in the inputs' dtype), reported as such
The kernels choose among them (csrc/cpu/weights.h, docs/kernels.md).

    PYTHONPATH=. python benchmarks/bench_bf16_products.py [--repeats 50] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

import rnnkit._library  # loads rnnkit._C, which registers rnnkit_testing::weight_product
from rnnkit.bench.machine import machine_slug
from rnnkit.hardware import cpu_bf16_features

# (label, M, N, K): C[M, N] += A[M, K] B[N, K]^T
SHAPES = [
    ("LSTM step N=64 H=512", 64, 2048, 512),
    ("input projection T=100 N=64 I=512", 6400, 2048, 512),
    ("square 2048", 2048, 2048, 2048),
    ("GRU step N=64 H=512", 64, 1536, 512),
    ("LSTM step N=16 H=256", 16, 1024, 256),
]

CPP = r"""
#include <torch/extension.h>
#include <cstdint>
extern "C" {
void cblas_gemm_bf16bf16f32(int, int, int, int, int, int, float, const uint16_t*, int,
                            const uint16_t*, int, float, float*, int) __attribute__((weak));
void cblas_gemm_f16f16f32(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int) __attribute__((weak));
}
namespace at { namespace native {
void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                   float beta, float alpha);
}}
// c[M, N] += a[M, K] b[N, K]^T, `repeats` times; returns seconds per call.
double mkl(at::Tensor a, at::Tensor b, at::Tensor c, int64_t repeats) {
  const int M = a.size(0), K = a.size(1), N = b.size(0);
  auto f = a.scalar_type() == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  TORCH_CHECK(f != nullptr, "not exported");
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < repeats; ++r)
    f(101, 111, 112, M, N, K, 1.0f, (const uint16_t*)a.data_ptr(), K,
      (const uint16_t*)b.data_ptr(), K, 1.0f, c.data_ptr<float>(), N);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
}
double onednn(at::Tensor a, at::Tensor b, at::Tensor c, int64_t repeats) {
  const at::Tensor bt = b.t();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < repeats; ++r) at::native::mkldnn_matmul(a, bt, c, 1.0f, 1.0f);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
}
"""


def build():
    return load_inline("rnnkit_bench_bf16_products", cpp_sources=CPP,
                       functions=["mkl", "onednn"], extra_cflags=["-O2"], verbose=False)


def timed(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def check(ext):
    """Each bf16 -> f32 candidate against a float64 product (beta = 1 onto a known C)."""
    torch.manual_seed(0)
    a, b = torch.randn(37, 129).bfloat16(), torch.randn(65, 129).bfloat16()
    c0 = torch.randn(37, 65)
    want = c0.double() + a.double() @ b.double().t()
    errors = {}
    for name, fn in (("mkl_bf16f32", ext.mkl), ("onednn_bf16f32", ext.onednn)):
        c = c0.clone()
        try:
            fn(a, b, c, 1)
            errors[name] = float((c.double() - want).abs().max())
        except RuntimeError as e:
            errors[name] = f"fails: {str(e).splitlines()[0][:80]}"
    return errors


def _reordered(a16, b16, c, reps):
    """oneDNN's linear on a weight reordered once (not timed), the result added onto c."""
    w = torch.ops.mkldnn._reorder_linear_weight(b16, a16.shape[0])
    return timed(lambda: c.add_(torch.ops.mkldnn._linear_pointwise(a16, w, None, "none", [], "")),
                 reps)


def _rnnkit(a16, b16, c, reps):
    """rnnkit's product: one call that prepares the weight and multiplies once, and one that
    multiplies reps + 1 times with it; the difference is reps products."""
    op = torch.ops.rnnkit_testing.weight_product
    one = timed(lambda: op(a16, b16, True, c, 1.0, True, 1), 1)
    many = timed(lambda: op(a16, b16, True, c, 1.0, True, reps + 1), 1)
    return max(many - one, 1e-12) / reps


def _candidates(ext, a32, b32, a16, b16, ah, bh, c, reps):
    """name -> a function timing one candidate (seconds per product)."""
    return {
        "mm_bf16": lambda: timed(lambda: torch.mm(a16, b16.t()), reps),
        "sgemm_f32": lambda: timed(lambda: torch.mm(a32, b32.t(), out=c), reps),
        "mkl_bf16f32": lambda: ext.mkl(a16, b16, c, reps),
        "mkl_f16f32": lambda: ext.mkl(ah, bh, c, reps),
        "widen_sgemm": lambda: timed(lambda: c.addmm_(a16.float(), b32.t()), reps),
        "mm_bf16_add": lambda: timed(lambda: c.add_(torch.mm(a16, b16.t())), reps),
        "reordered_bf16": lambda: _reordered(a16, b16, c, reps),
        "onednn_bf16f32": lambda: ext.onednn(a16, b16, c, reps),
        "rnnkit": lambda: _rnnkit(a16, b16, c, reps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="", help="how quiet the machine was, for the saved file")
    args = p.parse_args()
    ext = build()
    errors = check(ext)
    print("max error of a 37x65x129 product against float64:", errors)
    rows = []
    for label, M, N, K in SHAPES:
        torch.manual_seed(0)
        reps = max(3, args.repeats if M * N * K < 1e9 else args.repeats // 10)
        a32, b32 = torch.randn(M, K), torch.randn(N, K)
        a16, b16 = a32.bfloat16(), b32.bfloat16()
        ah, bh = a32.half(), b32.half()
        c = torch.zeros(M, N)
        flop = 2.0 * M * N * K
        res = {}
        runs = _candidates(ext, a32, b32, a16, b16, ah, bh, c, reps)
        for name, run in runs.items():
            samples = []
            for _ in range(3):
                try:
                    samples.append(run())
                except RuntimeError as e:
                    samples = None
                    res[name] = f"fails: {str(e).splitlines()[0][:80]}"
                    break
            if samples:
                res[name] = round(flop / statistics.median(samples) / 1e9, 1)
        rows.append({"shape": label, "M": M, "N": N, "K": K, "gflops": res})
        print(f"{label:38s} " + "  ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    if args.out:
        day = time.strftime("%Y-%m-%d")
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"date": day, "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "command": "python benchmarks/bench_bf16_products.py", "errors": errors,
                "rnnkit_path": rnnkit.build_info()["cpu_bf16_path"],
                "cpu_bf16_features": cpu_bf16_features(),
                "note": args.note}
        path = args.out / f"bf16-products-{machine_slug('cpu')}-{day}.json"
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print("wrote", path)


if __name__ == "__main__":
    main()

"""Where a bf16 time step's tile product (csrc/cpu/amx.h) finds its operands, and what that costs:
one thread, pinned to each core in turn, the modes of each experiment alternating round by round
so that the host's drifting speed hits them alike; medians and quartiles of each mode's time over
the first mode's, per round. Not run by pytest. Needs a CPU with AMX-BF16 (and GCC 11 or later).

    PYTHONPATH=. python benchmarks/bench_step_operands.py [--rounds 200] [--columns 1024 768]

The step is one thread's share of the LSTM's (or, at 768 columns, the GRU's) recurrent product at
N = 64, H = 512, two threads: C [64, columns] (float32) += h [64, 512] (bf16) times its columns
of W_hh, packed once. Sixteen steps make a round (an inference chunk of the layer holds 16 steps).

Experiment `c_operand` (the gates the step's product adds onto):
  zero      C starts from zero (tilezero) in a buffer that stays in L2 (the baseline)
  l2        C is loaded from that buffer (beta = 1), still in L2
  chunk     C is loaded from each step's rows of an 8 MiB chunk buffer, which is rewritten before
            the round, as the input projection writes it (the layer today)
  prefetch  as chunk, and each step first prefetches (prefetcht1) the whole of the next step's C
Experiment `projection` (the input projection of 16 steps):
  chunk     one product of 1,024 rows into the 8 MiB chunk buffer, then the 16 step products
            onto it (the layer today)
  per_step  each step one product with K = I + H = 1,024 ([x_t | h] times [W_ih | W_hh]),
            C from zero in a buffer that stays in L2: no chunk buffer at all
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

CPU_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cpu"

CPP = r"""
#include <torch/extension.h>
#include <chrono>
#include <cstring>
#include "amx.h"

namespace amx = rnnkit::cpu::amx;
using Clock = std::chrono::steady_clock;

static constexpr int64_t kM = 64, kK = 512, kSteps = 16;

static uint16_t* bits(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

// One step: C [kM, N] (+)= A B over all N columns, on tiles this thread has configured; the
// kM rows of prefetch_next (if not null) are prefetched into L2 first.
static void step(const uint16_t* A, int64_t lda, const amx::PackedTiles& B, float* C,
                 int64_t ldc, bool accumulate, const float* prefetch_next) {
  if (prefetch_next != nullptr)
    for (int64_t r = 0; r < kM; ++r)
      for (int64_t c = 0; c < B.N(); c += 16)
        _mm_prefetch(reinterpret_cast<const char*>(prefetch_next + r * ldc + c), _MM_HINT_T1);
  amx::multiply_columns(kM, A, lda, B, accumulate, C, ldc, 0, B.N());
}

static void touch(float* p, int64_t n) {  // as the projection writes the chunk buffer
  for (int64_t i = 0; i < n; i += 16) p[i] += 1.0f;
}

// [rounds, modes] seconds: in each round every mode once, run(mode) timed after prepare(mode),
// the modes' order rotating from round to round; on tiles configured for this thread.
template <typename Prepare, typename Run>
at::Tensor alternating(int64_t rounds, int64_t modes, const Prepare& prepare, const Run& run) {
  at::Tensor out = at::empty({rounds, modes}, at::kDouble);
  amx::configure();
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t i = 0; i < modes; ++i) {
      const int64_t mode = (i + r) % modes;
      prepare(mode);
      const auto t0 = Clock::now();
      run(mode);
      out[r][mode] = std::chrono::duration<double>(Clock::now() - t0).count();
    }
  amx::release();
  return out;
}

static amx::PackedTiles packed(const at::Tensor& w) {  // w: [N, K], a weight as stored
  return amx::PackedTiles(true, w.size(1), w.size(0),
                          reinterpret_cast<const c10::BFloat16*>(w.data_ptr()), w.size(1));
}

// [rounds, 4] seconds per round of kSteps steps: zero, l2, chunk, prefetch.
at::Tensor c_operand(int64_t N, int64_t rounds) {
  TORCH_CHECK(amx::usable(true), "AMX tiles are not usable here");
  at::Tensor h = at::randn({kM, kK}).to(at::kBFloat16), w = at::randn({N, kK}).to(at::kBFloat16);
  const amx::PackedTiles B = packed(w);
  at::Tensor small = at::zeros({kM, N}), chunk = at::zeros({kSteps * kM, N});
  return alternating(rounds, 4,
      [&](int64_t mode) {
        if (mode >= 2) touch(chunk.data_ptr<float>(), chunk.numel());
      },
      [&](int64_t mode) {
        for (int64_t s = 0; s < kSteps; ++s) {
          float* c = mode >= 2 ? chunk.data_ptr<float>() + s * kM * N : small.data_ptr<float>();
          const float* next = mode == 3 && s + 1 < kSteps ? c + kM * N : nullptr;
          step(bits(h), kK, B, c, N, mode != 0, next);
        }
      });
}

// [rounds, 2] seconds per round of kSteps steps: chunk, per_step.
at::Tensor projection(int64_t N, int64_t rounds) {
  TORCH_CHECK(amx::usable(true), "AMX tiles are not usable here");
  at::Tensor x = at::randn({kSteps * kM, kK}).to(at::kBFloat16);
  at::Tensor h = at::randn({kM, kK}).to(at::kBFloat16);
  at::Tensor xh = at::randn({kM, 2 * kK}).to(at::kBFloat16);
  at::Tensor w_ih = at::randn({N, kK}).to(at::kBFloat16), w_hh = at::randn({N, kK}).to(at::kBFloat16);
  const amx::PackedTiles Bih = packed(w_ih), Bhh = packed(w_hh);
  const amx::PackedTiles Bcat = packed(at::cat({w_ih, w_hh}, 1).contiguous());
  at::Tensor small = at::zeros({kM, N}), chunk = at::zeros({kSteps * kM, N});
  return alternating(rounds, 2, [](int64_t) {}, [&](int64_t mode) {
    if (mode == 0) {
      amx::multiply_columns(kSteps * kM, bits(x), kK, Bih, false, chunk.data_ptr<float>(), N, 0, N);
      for (int64_t s = 0; s < kSteps; ++s)
        step(bits(h), kK, Bhh, chunk.data_ptr<float>() + s * kM * N, N, true, nullptr);
    } else {
      for (int64_t s = 0; s < kSteps; ++s)
        step(bits(xh), 2 * kK, Bcat, small.data_ptr<float>(), N, false, nullptr);
    }
  });
}
"""

MODES = {"c_operand": ["zero", "l2", "chunk", "prefetch"], "projection": ["chunk", "per_step"]}


def build():
    return load_inline(
        "rnnkit_bench_step_operands",
        cpp_sources=CPP,
        functions=list(MODES),
        extra_include_paths=[str(CPU_DIR)],
        extra_cflags=["-O2", "-std=c++20", "-fopenmp"],
        verbose=False,
    )


def ratios(times: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per mode: the median and quartiles of its time over mode 0's, round by round."""
    out = []
    for m in range(times.shape[1]):
        q = statistics.quantiles((times[:, m] / times[:, 0]).tolist(), n=4)
        out.append((q[1], q[0], q[2]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--columns", type=int, nargs="+", default=[1024, 768])
    args = parser.parse_args()
    ext = build()
    torch.set_num_threads(1)
    cpus = sorted(os.sched_getaffinity(0))
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.rounds} rounds of 16 steps, one thread"
    )
    print(
        "| experiment | columns | core | each mode's time over the first mode's: median "
        "(quartiles) |"
    )
    print("|---|---|---|---|")
    try:
        for name, modes in MODES.items():
            for n in args.columns:
                for cpu in cpus:
                    os.sched_setaffinity(0, {cpu})
                    times = getattr(ext, name)(n, args.rounds)
                    cells = [
                        f"{mode} {med:.3f} ({lo:.3f}-{hi:.3f})"
                        for mode, (med, lo, hi) in zip(modes, ratios(times))
                    ]
                    print(f"| {name} | {n} | {cpu} | " + "; ".join(cells[1:]) + " |")
    finally:
        os.sched_setaffinity(0, cpus)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

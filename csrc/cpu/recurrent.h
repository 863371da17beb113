// One time step's recurrent product and pointwise pass, fused per thread for small batches.
//
// For a batch of a few rows the recurrent product h @ W_hh^T is a matrix-vector product that a
// BLAS call spends mostly on threading and packing overhead. RecurrentStep instead packs W_hh
// once per call into blocks of V hidden units (V = SIMD width), each block holding, for every
// recurrent input r, the V weights of each of the K gates side by side:
//   packed[b][r][k][v] = W_hh[k * H + b * V + v][r]        (zero where b * V + v >= H)
// Each thread then owns a fixed range of unit blocks (the same every step, so its share of the
// weights stays in its own cache), computes the gates of its units and runs the pointwise pass
// on them at once, with no BLAS call. The steps of a chunk run in one parallel region: threads
// meet once per step, at a barrier, because the next step reads every unit of h. The state is
// double-buffered (StateBuffers) so that no thread overwrites h while another still reads it.
// Larger batches, and in float and double sequences of fewer than kPackFromSteps steps, take the
// BLAS product (WeightB: MKL's packed sgemm where available) followed by the row-parallel
// pointwise pass, one step at a time.
// With bfloat16 or float16 storage, the packed weights and the sums are float32 (the state h,
// in the storage type, is widened as it is read).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/plan.h"
#include "bf16_dot.h"
#include "blas.h"
#include "loops.h"
#include "weights.h"

namespace rnnkit {
namespace cpu {

// The largest active batch that takes the fused small-batch path, and the batch rows one pass
// over a block's weights serves (K gates x 4 rows of sums fill the SIMD registers).
constexpr int64_t kSmallBatch = 16;
constexpr int64_t kRowsPerPass = 4;
// The fewest steps for which a layer packs W_hh, for MKL's packed product or, in float and
// double, for the small-batch path (the packing costs about one product; a cell step, T = 1,
// multiplies unpacked).
constexpr int64_t kPackFromSteps = 4;

// One time step as its pointwise body sees it (storage and compute types as in StepForward).
template <typename scalar_t, typename compute_t = scalar_t>
struct StepState {
  int64_t t, bs, row;      // time index, active batch, first packed row
  compute_t* gates;        // the step's rows of the layer's buffer (its input projection)
  const scalar_t* h_prev;  // [N, R]: the state the step starts from (rows < bs)
  scalar_t* h_next;        // [N, R]: the body writes the step's new state here (rows < bs)
};

// The recurrent state of a layer, double-buffered: step s reads prev(s) and writes next(s), so
// that the threads of one step never write what another still reads. Both buffers start as h0,
// so that rows joining late (a reversed packed sequence) start from it.
template <typename scalar_t>
class StateBuffers {
 public:
  // h: [N, R], h0 on entry and h_n after finish().
  StateBuffers(scalar_t* h, int64_t N, int64_t R) : h_(h), spare_(h, h + N * R), N_(N), R_(R) {}

  const scalar_t* prev(int64_t s) const { return s % 2 ? spare_.data() : h_; }
  scalar_t* next(int64_t s) { return s % 2 ? h_ : spare_.data(); }

  // Row n's last state is in the buffer its last step wrote: after step L - 1, where L is the
  // number of steps run with n active (all T when the batch never shrinks as the steps go on).
  void finish(const SequencePlan& plan) {
    for (int64_t n = 0; n < N_; ++n) {
      int64_t last = plan.T();
      if (!plan.reverse) {
        last = 0;
        while (last < plan.T() && plan.batch_sizes[last] > n) ++last;
      }
      if (last % 2) std::memcpy(h_ + n * R_, spare_.data() + n * R_, sizeof(scalar_t) * R_);
    }
  }

 private:
  scalar_t* h_;
  std::vector<scalar_t> spare_;
  int64_t N_, R_;
};

// Which way RecurrentStep's weight multiplies (its constructor says more).
enum Orientation { WeightRows, WeightColumns };

// The rows of one step of backward through time as RecurrentStep::run_grad_steps sees them.
template <typename compute_t>
struct GradState {
  int64_t bs;              // active batch
  const compute_t* a;      // [bs, R] (RecurrentStep's R): what the pointwise pass wrote, times W
  compute_t* acc;          // [N, H]: acc (+)= a W, rows < bs
  const compute_t* carry;  // [N, H] or null: added to acc after the product
};

template <typename scalar_t, typename compute_t = scalar_t>
class RecurrentStep {
 public:
  using Vec = at::vec::Vectorized<compute_t>;
  static constexpr int64_t V = Vec::size();

  // The product's K * H outputs (K gates of H units) each sum over R inputs:
  //   WeightRows (the forward's h_prev W_hh^T): w_hh is [K * H, R], an output per row;
  //   WeightColumns (backward through time's da W_hh, K = 1): w_hh is [R, H], an output per
  //   column (H the layer's R, R the layer's G).
  // max_batch: the largest active batch of the sequence; steps: how many steps will run
  // (packing for MKL's packed product pays from a few steps on).
  RecurrentStep(const scalar_t* w_hh, int64_t K, int64_t H, int64_t R, int64_t max_batch,
                int64_t steps, Orientation orientation = WeightRows)
      : K_(K), H_(H), R_(R), blocks_((H + V - 1) / V), rows_(orientation == WeightRows),
        blas_(/*trans_b=*/rows_, max_batch, K * H, R, w_hh, rows_ ? R : K * H,
              /*pack=*/max_batch > kSmallBatch && steps >= kPackFromSteps) {
    TORCH_CHECK(rows_ || K == 1, "rnnkit: internal error: RecurrentStep over weight columns "
                "takes one gate, got ", K);
    if (max_batch > kSmallBatch || K > 4) return;
    // In float and double, fewer than kPackFromSteps steps (a cell's step) multiply W_hh as it is
    // stored, through BLAS: packing it cost more than those steps save (the LSTM layer operator,
    // N = 1, H = 256, three runs: T = 1 in 42-57 against 83-129 us a call, T = 2 61-74 against
    // 93-144, T = 4 105-113 against 121-190, T = 8 even). The reduced types pack from one step
    // on: their unpacked product goes through oneDNN, rounded, at every step, which was no faster
    // at T = 1 and twice as slow from T = 4.
    if (std::is_same_v<scalar_t, compute_t> && steps < kPackFromSteps) return;
    small_ = true;
    if constexpr (kBf16Dot) {
      if (use_bf16_dot()) {
        const int64_t block = bf16_dot::pairs(R) * K * V * 2;
        packed16_.reset(new uint16_t[blocks_ * block]);
        in_region([&](int64_t b0, int64_t b1, const auto&) {
          for (int64_t b = b0; b < b1; ++b) {
            uint16_t* to = packed16_.get() + b * block;
            if (rows_) {
              bf16_dot::pack_block(w_hh, K, H, R, b, to);
            } else {
              bf16_dot::pack_columns(w_hh, R, H, b, to);
            }
          }
        });
        return;
      }
    }
    packed_.reset(new compute_t[blocks_ * R * K * V]);  // uninitialised: the threads fill it
    // Split over threads as every step splits the blocks (in_region), so each thread packs (and
    // first touches) the weights it will read every step.
    in_region([&](int64_t b0, int64_t b1, const auto&) {
      for (int64_t b = b0; b < b1; ++b) pack_block(w_hh, b);
    });
  }

  // Steps s0 <= s < s1 in order, each: acc (+)= h_prev W_hh^T, then body(n, j, lanes) for every
  // unit j < H of every active row n, then finish(state) (nullptr: none).
  //   state_at(s) -> StepState; acc_of(state) -> the step's accumulator [bs, >= K * H], row
  //   stride ld_acc; body_of(state) -> the step's pointwise body, which writes the new state to
  //   state.h_next.
  // The small-batch path runs all the steps in one parallel region when there is no finish.
  template <typename At, typename AccOf, typename BodyOf, typename Finish>
  void run_steps(int64_t s0, int64_t s1, const At& state_at, const AccOf& acc_of, int64_t ld_acc,
                 bool accumulate, const BodyOf& body_of, const Finish& finish) const {
    constexpr bool kFinish = !std::is_same_v<Finish, std::nullptr_t>;
    if (small_ && !kFinish) {
      in_region([&](int64_t b0, int64_t b1, const auto& barrier) {
        for (int64_t s = s0; s < s1; ++s) {
          const StepState<scalar_t, compute_t> st = state_at(s);
          blocks(b0, b1, st.bs, st.h_prev, acc_of(st), ld_acc, accumulate, body_of(st));
          barrier();
        }
      });
      return;
    }
    for (int64_t s = s0; s < s1; ++s) {
      const StepState<scalar_t, compute_t> st = state_at(s);
      run(st.bs, st.h_prev, acc_of(st), ld_acc, accumulate, body_of(st));
      if constexpr (kFinish) finish(st);
    }
  }

  // Whether this call takes the small-batch path (run_grad_steps needs it).
  bool small() const { return small_; }

  // Backward through time's steps 0 <= s < steps in order, with WeightColumns weights and the
  // small-batch path, all in one parallel region. Each step: body(n, j, lanes) for every unit
  // j < H of every active row n (the pointwise pass, which writes state.a), then, once every
  // thread has passed that, acc (+)= a W (+ carry). A thread multiplies for the output columns
  // that are its own units, so the next step's pointwise pass reads only what the same thread
  // wrote: one barrier a step.
  //   state_at(s) -> GradState; body_of(s) -> the step's pointwise body.
  template <typename At, typename BodyOf>
  void run_grad_steps(int64_t steps, const At& state_at, const BodyOf& body_of,
                      bool accumulate) const {
    TORCH_CHECK(small_ && !rows_, "rnnkit: internal error: run_grad_steps wants the small-batch "
                "path over weight columns");
    in_region([&](int64_t b0, int64_t b1, const auto& barrier) {
      // With the dot products, each thread rounds the whole of a to bfloat16 for itself.
      std::vector<scalar_t> narrow(kBf16Dot && packed16_ ? kSmallBatch * R_ : 0);
      scalar_t* mine = narrow.empty() ? nullptr : narrow.data();
      for (int64_t s = 0; s < steps; ++s) {
        const GradState<compute_t> st = state_at(s);
        units(b0, b1, st.bs, body_of(s));
        barrier();
        if (mine != nullptr) {
          at::vec::convert(st.a, mine, st.bs * R_);
          products(b0, b1, st.bs, static_cast<const scalar_t*>(mine), st.acc, H_, accumulate);
        } else {
          products(b0, b1, st.bs, st.a, st.acc, H_, accumulate);
        }
        if (st.carry == nullptr) continue;
        const int64_t j0 = b0 * V, j1 = std::min(b1 * V, H_);
        for (int64_t n = 0; n < st.bs; ++n)
          for (int64_t j = j0; j < j1; ++j) st.acc[n * H_ + j] += st.carry[n * H_ + j];
      }
    });
  }

 private:
  // packed[b][r][k][v] for block b: per gate k, the block's rows of W_hh ([units, R]) transposed
  // (ATen's transpose_mxn: 16 x 16 tiles in registers with AVX-512 floats, else one value at a
  // time), and zeros for units past H.
  void pack_block(const scalar_t* w_hh, int64_t b) {
    compute_t* block = packed_.get() + b * R_ * K_ * V;
    const int64_t units = std::min<int64_t>(V, H_ - b * V);
    if (units < V) std::fill(block, block + R_ * K_ * V, compute_t(0));
    if (!rows_) {  // block[r][v] = w_hh[r][b * V + v]: a slice of each row
      for (int64_t r = 0; r < R_; ++r)
        for (int64_t v = 0; v < units; ++v)
          block[r * V + v] = static_cast<compute_t>(w_hh[r * H_ + b * V + v]);
      return;
    }
    for (int64_t k = 0; k < K_; ++k) {
      const scalar_t* rows = w_hh + (k * H_ + b * V) * R_;  // [units, R]
      if constexpr (std::is_same_v<scalar_t, compute_t>) {
        at::vec::transpose_mxn<scalar_t>(rows, R_, block + k * V, K_ * V, int(units), int(R_));
      } else {  // widened one value at a time: once per call
        for (int64_t v = 0; v < units; ++v)
          for (int64_t r = 0; r < R_; ++r)
            block[(r * K_ + k) * V + v] = static_cast<compute_t>(rows[v * R_ + r]);
      }
    }
  }

  // One step on its own: acc[n, k * H + j] (+)= sum_r h[n, r] * W_hh[k * H + j, r] for
  // n < rows, then pointwise(n, j, lanes) for every unit j < H of every row n < rows.
  //   h: [rows, R] (row stride R); acc: [rows, >= K * H] (row stride ld_acc)
  template <typename Body>
  void run(int64_t rows, const scalar_t* h, compute_t* acc, int64_t ld_acc, bool accumulate,
           const Body& pointwise) const {
    if (rows <= 0) return;
    if (!small_ || rows > kSmallBatch) {
      blas_.multiply(rows, h, R_, accumulate ? 1 : 0, acc, ld_acc);
      for_each_unit<compute_t>(rows, H_, pointwise, &unit_rates_);
      return;
    }
    in_region([&](int64_t b0, int64_t b1, const auto&) {
      blocks(b0, b1, rows, h, acc, ld_acc, accumulate, pointwise);
    });
  }

  // The small-batch path's share of one step for the unit blocks [b0, b1): their product, then
  // the pointwise pass on their units of every row n < rows.
  template <typename Body>
  void blocks(int64_t b0, int64_t b1, int64_t rows, const scalar_t* h, compute_t* acc,
              int64_t ld_acc, bool accumulate, const Body& pointwise) const {
    products(b0, b1, rows, h, acc, ld_acc, accumulate);
    units(b0, b1, rows, pointwise);
  }

  // The products of the unit blocks [b0, b1) for every row n < rows (product_block).
  template <typename In>
  void products(int64_t b0, int64_t b1, int64_t rows, const In* h, compute_t* acc,
                int64_t ld_acc, bool accumulate) const {
    for (int64_t b = b0; b < b1; ++b) product_block(b, rows, h, acc, ld_acc, accumulate);
  }

  // body(n, j, lanes) for the units j of the blocks [b0, b1) of every row n < rows.
  template <typename Body>
  void units(int64_t b0, int64_t b1, int64_t rows, const Body& body) const {
    const int64_t j0 = b0 * V, j1 = std::min(b1 * V, H_);
    for (int64_t n = 0; n < rows; ++n) unit_loop<compute_t>(n, j0, j1, body);
  }

  // body(b0, b1, barrier) on each thread of one parallel region, with the thread's fixed range of
  // unit blocks [b0, b1): the same split for every call with as many threads, so a thread reads
  // the weights it packed. barrier() waits for the whole team. With one thread, or inside
  // another parallel region (where a barrier would bind to that region's team), body runs
  // inline over all blocks and barrier() does nothing.
  template <typename Body>
  void in_region(const Body& body) const {
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), blocks_);
    if (threads <= 1 || at::in_parallel_region()) {
      body(0, blocks_, [] {});
      return;
    }
#pragma omp parallel num_threads(threads)
    {
      const int64_t team = omp_get_num_threads(), chunk = (blocks_ + team - 1) / team;
      const int64_t b0 = std::min(blocks_, omp_get_thread_num() * chunk);
      body(b0, std::min(blocks_, b0 + chunk), [] {
#pragma omp barrier
      });
    }
  }

  // acc[n, k * H + j] (+)= h[n] . W_hh[k * H + j, :] for the units j of block b and every row
  // n < rows: one pass over the block's weights per kRowsPerPass rows.
  template <typename In>
  void product_block(int64_t b, int64_t rows, const In* h, compute_t* acc, int64_t ld_acc,
                     bool accumulate) const {
    for (int64_t n = 0; n < rows; n += kRowsPerPass) {
      const int64_t m = std::min(kRowsPerPass, rows - n);
      const In* hn = h + n * R_;
      compute_t* an = acc + n * ld_acc;
      switch (K_) {
        case 1: product_block_k<1, In>(b, m, hn, an, ld_acc, accumulate); break;
        case 2: product_block_k<2, In>(b, m, hn, an, ld_acc, accumulate); break;
        case 3: product_block_k<3, In>(b, m, hn, an, ld_acc, accumulate); break;
        default: product_block_k<4, In>(b, m, hn, an, ld_acc, accumulate); break;
      }
    }
  }

  template <int K, typename In>
  void product_block_k(int64_t b, int64_t rows, const In* h, compute_t* acc, int64_t ld_acc,
                       bool accumulate) const {
    if constexpr (kBf16Dot && std::is_same_v<In, scalar_t>) {
      if (packed16_) {
        const uint16_t* block = packed16_.get() + b * bf16_dot::pairs(R_) * K * V * 2;
        const int64_t j = b * V, width = std::min<int64_t>(V, H_ - j);
        const auto run = [&]<int ROWS>() {
          bf16_dot::product_rows<K, ROWS>(block, R_, h, acc, ld_acc, H_, j, width, accumulate);
        };
        switch (rows) {
          case 1: return run.template operator()<1>();
          case 2: return run.template operator()<2>();
          case 3: return run.template operator()<3>();
          default: return run.template operator()<4>();
        }
      }
    }
    switch (rows) {
      case 1: return product_rows<K, 1, In>(b, h, acc, ld_acc, accumulate);
      case 2: return product_rows<K, 2, In>(b, h, acc, ld_acc, accumulate);
      case 3: return product_rows<K, 3, In>(b, h, acc, ld_acc, accumulate);
      default: return product_rows<K, 4, In>(b, h, acc, ld_acc, accumulate);
    }
  }

  // K gates and ROWS batch rows known at compile time, so the K * ROWS sums live in registers.
  // A single row's sums are split S ways (consecutive r into separate sums) so that at least
  // eight multiply-adds are in flight: each waits for its sum's previous one. With several rows,
  // the rows do that.
  template <int K, int ROWS, typename In>
  void product_rows(int64_t b, const In* h, compute_t* acc, int64_t ld_acc,
                    bool accumulate) const {
    constexpr int S = ROWS == 1 ? std::max(2, 8 / K) : 1;
    Vec sum[S][ROWS][K];
    for (int s = 0; s < S; ++s)
      for (int n = 0; n < ROWS; ++n)
        for (int k = 0; k < K; ++k) sum[s][n][k] = Vec(compute_t(0));
    const compute_t* w = packed_.get() + b * R_ * K * V;
    int64_t r = 0;
    if constexpr (S > 1) {
      for (; r + S <= R_; r += S)
        for (int s = 0; s < S; ++s) {
          const Vec hs(static_cast<compute_t>(h[r + s]));
          for (int k = 0; k < K; ++k)
            sum[s][0][k] = at::vec::fmadd(hs, Vec::loadu(w + ((r + s) * K + k) * V), sum[s][0][k]);
        }
    }
    for (; r < R_; ++r) {
      Vec wk[K];
      for (int k = 0; k < K; ++k) wk[k] = Vec::loadu(w + (r * K + k) * V);
      for (int n = 0; n < ROWS; ++n) {
        const Vec hn(static_cast<compute_t>(h[n * R_ + r]));
        for (int k = 0; k < K; ++k) sum[0][n][k] = at::vec::fmadd(hn, wk[k], sum[0][n][k]);
      }
    }
    const int64_t j = b * V, width = std::min<int64_t>(V, H_ - j);
    for (int n = 0; n < ROWS; ++n) {
      for (int k = 0; k < K; ++k) {
        Vec total = sum[0][n][k];
        for (int s = 1; s < S; ++s) total = total + sum[s][n][k];
        compute_t* dst = acc + n * ld_acc + k * H_ + j;
        if (width == V) {
          (accumulate ? total + Vec::loadu(dst) : total).store(dst);
        } else {
          compute_t tmp[V];
          total.store(tmp);
          for (int64_t v = 0; v < width; ++v) dst[v] = accumulate ? dst[v] + tmp[v] : tmp[v];
        }
      }
    }
  }

  int64_t K_, H_, R_, blocks_;
  bool rows_;  // WeightRows (else WeightColumns)
  // bfloat16 weights read by AVX512-BF16 dot products (bf16_dot.h), where the CPU has them and
  // the build's SIMD registers are 16 floats wide.
  static constexpr bool kBf16Dot =
      bf16_dot::kAvailable && std::is_same_v<scalar_t, c10::BFloat16> && V == bf16_dot::V;
  WeightB<scalar_t, compute_t> blas_;    // the BLAS path's product
  bool small_ = false;                   // the small-batch path (else the BLAS path)
  std::unique_ptr<uint16_t[]> packed16_;  // the small-batch path's weights with kBf16Dot
  std::unique_ptr<compute_t[]> packed_;  // the small-batch path's weights otherwise
  mutable ThreadRates unit_rates_;       // the BLAS path's pointwise pass, step after step
};

}  // namespace cpu
}  // namespace rnnkit

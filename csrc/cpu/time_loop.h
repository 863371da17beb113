// The CPU's one time loop, forward and backward through time, for every cell (common/cell.h):
// padded and packed input, both directions, the inference chunks and the small-batch fused path.
//
// Forward, per layer and direction:
//   1. the input projection x w_ih^T: one product for the whole sequence in training (into the
//      workspace that backward reads), one per chunk of steps in inference (ProjectionChunks)
//   2. per step: the recurrent product h_prev W_hh^T, accumulated onto the projection (or into a
//      buffer of its own, Cell::kRecurrentApart), then the cell's fused pointwise pass, which
//      adds the biases; RecurrentStep fuses the two for small batches
//   3. with a projection (LSTM proj_size), one product per step: out = h_pre w_hr^T
// Backward: per step the cell's pointwise pass and one recurrent product (RecurrentStep fuses the
// two for small batches); the gradients of the input and of the weights follow in
// common/layer.h, one large product each over all steps.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>

#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../common/layer.h"
#include "blas.h"
#include "chunks.h"
#include "gate_grads.h"
#include "loops.h"
#include "memory.h"
#include "recurrent.h"
#include "weights.h"

namespace rnnkit {
namespace cpu {

// gates: the buffer the input projection goes into, row stride ld (the workspace [P, W] in
// training; the chunk scratch [chunk rows, G] in inference; the output [P, R] for a cell that
// saves nothing, in float and double). rec: [N, G] for Cell::kRecurrentApart. h_pre: [N, H]
// scratch with a projection in inference. c: [N, H] the cell state (c0 in, c_n out). All in the
// compute type.
template <typename compute_t>
struct ForwardBuffers {
  compute_t* gates;
  int64_t ld;
  bool whole;  // gates holds every packed row (else one chunk of them)
  compute_t* rec;
  compute_t* h_pre;
  compute_t* c;
};

// Where a reduced storage type (bfloat16, float16) and its float32 compute type part ways in the
// forward loop: the projected output comes out of its product in float32 and is rounded once.
template <typename scalar_t, typename compute_t>
constexpr bool kWidened = !std::is_same_v<scalar_t, compute_t>;

// scalar_t: the storage type (input, weights, output, h); compute_t: the gates, the workspace and
// the cell state (at::opmath_type<scalar_t>).
template <typename Cell, typename scalar_t, typename compute_t>
void forward_steps(const ForwardCall& call, const ForwardBuffers<compute_t>& buf) {
  const SequencePlan& plan = call.plan;
  const int64_t I = call.d.I, H = call.d.H, R = call.d.R, G = call.d.G, ld = buf.ld;
  const scalar_t* x = ptr<scalar_t>(call.x);
  scalar_t* out = ptr<scalar_t>(call.output);
  // Both biases go to the input side, except b_hh of a cell that keeps the recurrent part apart.
  const std::vector<compute_t> bias = bias_sum<compute_t>(
      G, ptr<scalar_t>(call.b_ih), Cell::kRecurrentApart ? nullptr : ptr<scalar_t>(call.b_hh));
  const std::vector<compute_t> rec_bias =
      Cell::kRecurrentApart && call.b_hh.defined()
          ? bias_sum<compute_t>(G, ptr<scalar_t>(call.b_hh), static_cast<const scalar_t*>(nullptr))
          : std::vector<compute_t>();
  const RecurrentStep<scalar_t, compute_t> rec(ptr<scalar_t>(call.w_hh), Cell::kGates, H, R,
                                               plan.N, plan.T());
  const bool project = Cell::kProjection && call.proj;
  const int64_t h_pre_at = [&] {
    if constexpr (Cell::kProjection) return typename Cell::Layout{H, true}.h_pre();
    return int64_t(0);
  }();

  StepForward<scalar_t, compute_t> base{};
  base.ld_gates = ld;
  base.rec = buf.rec;
  base.bias = bias.data();
  base.rec_bias = rec_bias.empty() ? nullptr : rec_bias.data();
  base.c = buf.c;
  base.ld_h_pre = call.train ? ld : H;
  base.H = H;
  base.R = R;
  base.save = call.train;
  base.act = call.act;
  base.norm = ptr<compute_t>(call.norm);
  const auto io_of = [&](const StepState<scalar_t, compute_t>& st) {
    StepForward<scalar_t, compute_t> io = base;
    io.gates = st.gates;
    io.h_prev = st.h_prev;
    io.h_next = st.h_next;
    io.out = out + st.row * R;
    if (project) io.h_pre = call.train ? st.gates + h_pre_at : buf.h_pre;
    return io;
  };
  const auto body_of = [&](const StepState<scalar_t, compute_t>& st) {
    const zoneout::Step<scalar_t, compute_t> z =
        step_zoneout<scalar_t, compute_t>(call.zoneout, st.t, plan.N, R, H, project);
    return [io = io_of(st), z](int64_t n, int64_t j, auto lanes) {
      if constexpr (!row_norm<Cell>()) zoneout::forward<Cell, decltype(lanes)>(io, z, n, j);
    };
  };
  const auto acc_of = [&](const StepState<scalar_t, compute_t>& st) {
    return Cell::kRecurrentApart ? buf.rec : st.gates;
  };
  const int64_t ld_acc = Cell::kRecurrentApart ? G : ld;
  // With a projection: out = h_pre w_hr^T, which is also the next step's state. In a reduced
  // storage type the product goes to a float32 scratch first and is rounded once.
  const WeightB<scalar_t, compute_t> w_hr(/*trans_b=*/true, plan.N, R, H, ptr<scalar_t>(call.w_hr),
                                          H, /*pack=*/project && plan.T() >= kPackFromSteps);
  std::vector<compute_t> projected(kWidened<scalar_t, compute_t> && project ? plan.N * R : 0);
  const auto finish = [&](const StepState<scalar_t, compute_t>& st) {
    scalar_t* out_t = out + st.row * R;  // [bs, R]
    const compute_t* h_pre = call.train ? st.gates + h_pre_at : buf.h_pre;
    // zoneout mixes the projected h, in the compute type (before the rounding to storage)
    const auto mix_h = [&](compute_t* y) {
      const auto z = step_zoneout<scalar_t>(call.zoneout, st.t, plan.N, R, H, false).h;
      for (int64_t n = 0; n < st.bs; ++n)
        for (int64_t r = 0; r < R; ++r)
          y[n * R + r] = zoneout::mix(z.template at<Lanes<compute_t, compute_t>>(n, r),
                                      static_cast<compute_t>(st.h_prev[n * R + r]), y[n * R + r]);
    };
    if constexpr (kWidened<scalar_t, compute_t>) {
      w_hr.multiply(st.bs, h_pre, base.ld_h_pre, 0, projected.data(), R);
      if (call.zoneout.h()) mix_h(projected.data());
      at::vec::convert(projected.data(), out_t, st.bs * R);
    } else {
      w_hr.multiply(st.bs, h_pre, base.ld_h_pre, 0, out_t, R);
      if (call.zoneout.h()) mix_h(out_t);
    }
    std::memcpy(st.h_next, out_t, sizeof(scalar_t) * st.bs * R);
  };

  StateBuffers<scalar_t> states(ptr<scalar_t>(call.h), plan.N, R);
  const ProjectionChunks chunks(plan, buf.whole, ld * int64_t(sizeof(compute_t)));
  const WeightB<scalar_t, compute_t> w_ih(/*trans_b=*/true, chunks.max_rows(), G, I,
                                          ptr<scalar_t>(call.w_ih), I, /*pack=*/false);
  for (int64_t k = 0; k < chunks.count(); ++k) {
    const int64_t first_row = chunks.first_row(k);
    w_ih.multiply(chunks.rows(k), x + first_row * I, I, 0,
                  buf.gates + (buf.whole ? first_row * ld : 0), ld);
    const auto state_at = [&](int64_t s) {
      const int64_t t = plan.forward_step(s), row = plan.offsets[t];
      return StepState<scalar_t, compute_t>{t, plan.batch_sizes[t], row,
                                            buf.gates + (buf.whole ? row : row - first_row) * ld,
                                            states.prev(s), states.next(s)};
    };
    const int64_t s0 = chunks.first_step(k), s1 = chunks.end_step(k);
    if constexpr (row_norm<Cell>()) {
      // A row-norm cell's pass runs per row once the step's whole product is in (as a finish):
      // the per-unit body does nothing.
      const auto no_body = [](const StepState<scalar_t, compute_t>&) {
        return [](int64_t, int64_t, auto) {};
      };
      const auto rows = [&](const StepState<scalar_t, compute_t>& st) {
        const StepForward<scalar_t, compute_t> io = io_of(st);
        zoneout::Step<scalar_t, compute_t> z =
            step_zoneout<scalar_t, compute_t>(call.zoneout, st.t, plan.N, R, H, false);
        z.prev_c = ptr<compute_t>(call.prev_c);
        for_each_row(st.bs, H, [&](int64_t n) {
          zoneout::forward_row<Cell>(io, z, n, HostRow<compute_t>{});
        });
      };
      rec.run_steps(s0, s1, state_at, acc_of, ld_acc, false, no_body, rows);
    } else {
      if constexpr (Cell::kProjection) {
        if (project) {
          rec.run_steps(s0, s1, state_at, acc_of, ld_acc, !Cell::kRecurrentApart, body_of, finish);
          continue;
        }
      }
      rec.run_steps(s0, s1, state_at, acc_of, ld_acc, !Cell::kRecurrentApart, body_of, nullptr);
    }
  }
  states.finish(plan);
}

// Returns the gate gradients rounded for the weight products where it rounded them as the steps
// completed them (bfloat16, past the small-batch path: gate_grads.h); else nothing.
template <typename Cell, typename scalar_t, typename compute_t>
GateGrads backward_steps(const BackwardCall& call) {
  const SequencePlan& plan = call.plan;
  const int64_t H = call.d.H, R = call.d.R, G = call.d.G;
  compute_t* dh = ptr<compute_t>(call.dh);
  compute_t* da_rec = ptr<compute_t>(call.da_rec);
  compute_t* dh_pre = ptr<compute_t>(call.dh_pre);
  compute_t* carry_h = ptr<compute_t>(call.carry_h);
  const bool project = Cell::kProjection && call.proj;
  const StepBackward<scalar_t, compute_t> first = step_backward<scalar_t, compute_t>(call);
  // The step's zoneout, with the buffers its backward pass carries gradients in.
  const auto zoneout_at = [&](int64_t t) {
    zoneout::Step<scalar_t, compute_t> z =
        step_zoneout<scalar_t, compute_t>(call.zoneout, t, plan.N, R, H, project);
    z.carry_h = carry_h;
    z.carry_c = ptr<compute_t>(call.carry_c);
    return z;
  };
  // Small batches, where each step's pointwise pass reads the units of dh that the step before
  // computed (no projection, no norm over a whole row): the pass and the product da_rec W_hh
  // fused per thread (RecurrentStep::run_grad_steps), as the forward steps are.
  if constexpr (!row_norm<Cell>()) {
    // (the batch is checked first: at a larger one the constructor would pack W_hh for BLAS)
    if (!project && plan.N <= kSmallBatch) {
      const RecurrentStep<scalar_t, compute_t> grad(ptr<scalar_t>(call.w_hh), /*K=*/1, /*H=*/R,
                                                    /*R=*/G, plan.N, plan.T(), WeightColumns);
      if (grad.small()) {
        const auto state_at = [&](int64_t s) {
          const int64_t t = plan.backward_step(s);
          return GradState<compute_t>{plan.batch_sizes[t], da_rec + plan.offsets[t] * G, dh,
                                      call.zoneout.h() ? carry_h : nullptr};
        };
        const auto body_of = [&](int64_t s) {
          const int64_t t = plan.backward_step(s);
          return [io = first.at_row(plan.offsets[t], R, G), z = zoneout_at(t)](
                     int64_t n, int64_t j, auto lanes) {
            zoneout::backward<Cell, decltype(lanes)>(io, z, n, j);
          };
        };
        grad.run_grad_steps(plan.T(), state_at, body_of, /*accumulate=*/Cell::kDirectGrad);
        return {};
      }
    }
  }
  const WeightB<scalar_t, compute_t> w_hh(/*trans_b=*/false, plan.N, R, G,
                                          ptr<scalar_t>(call.w_hh), R,
                                          plan.T() >= kPackFromSteps);
  const WeightB<scalar_t, compute_t> w_hr(/*trans_b=*/false, plan.N, H, R,
                                          ptr<scalar_t>(call.w_hr), H,
                                          /*pack=*/project && plan.T() >= kPackFromSteps);
  ThreadRates unit_rates;  // the pointwise pass's, step after step
  std::optional<RoundGateGrads> rounded;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    rounded.emplace(call.da, call.da_rec,
                    columns_from_da(call.da, call.da_rec, shared_gates<Cell>() * H));
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    StepBackward<scalar_t, compute_t> io = first.at_row(row, R, G);
    const zoneout::Step<scalar_t, compute_t> z = zoneout_at(t);
    if (project) {
      // dr = dL/d(output of this step) = carried dh + grad_output; dh_pre = dr w_hr.
      compute_t* dr_t = ptr<compute_t>(call.dr) + row * R;
      const compute_t* gout_t = io.dh_out;
      for (int64_t k = 0; k < bs * R; ++k)
        dr_t[k] = dh[k] + (gout_t ? gout_t[k] : compute_t(0));
      if (call.zoneout.h()) {  // through the mix of the projected h (forward's finish)
        const auto zh = step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, false).h;
        for (int64_t n = 0; n < bs; ++n)
          for (int64_t r = 0; r < R; ++r) {
            const auto s = zoneout::split(zh.template at<Lanes<compute_t, compute_t>>(n, r),
                                          dr_t[n * R + r]);
            carry_h[n * R + r] = s.carry;
            dr_t[n * R + r] = s.cand;
          }
      }
      w_hr.multiply(bs, dr_t, R, 0, dh_pre, H);
      io.dh_out = dh_pre;
      io.dh = nullptr;
    }
    if constexpr (row_norm<Cell>()) {
      for_each_row(bs, H, [&](int64_t n) {
        zoneout::backward_row<Cell>(io, z, n, HostRow<compute_t>{});
      });
    } else {
      for_each_unit<compute_t>(
          bs, H,
          [&](int64_t n, int64_t j, auto lanes) {
            zoneout::backward<Cell, decltype(lanes)>(io, z, n, j);
          },
          &unit_rates);
    }
    // dh_prev = da_rec w_hh (+ the direct part the pointwise pass stored) (+ zoneout's carry)
    w_hh.multiply(bs, da_rec + row * G, G, Cell::kDirectGrad ? 1 : 0, dh, R);
    if (call.zoneout.h())
      for (int64_t k = 0; k < bs * R; ++k) dh[k] += carry_h[k];
    if (rounded) rounded->rows_done(row, bs);
  }
  return rounded ? rounded->finish() : GateGrads{};
}

// The CPU backend of common/layer.h. float16 and bfloat16 are stored as they come (input,
// weights, output, states) and computed in float32 (compute_dtype): the workspace, the cell
// state within a call and the gradients through time are float32.
struct Backend {
  static constexpr bool kHalfTypes = true;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static void check_device(const at::Tensor&, const char*) {}
  static at::ScalarType compute_dtype(at::ScalarType t) {
    return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
  }
  static at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return large_buffer(sizes, options);
  }

  // The gate gradients rounded for the weight products, and their sums (weight_grads.h): a
  // bfloat16 layer's float32 gradients in one pass, not a rounding and a sum (the pass sums them
  // whether wanted or not: it is the same pass), and transposed where that pays (gate_grads.h).
  static GateGrads gate_grads(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared,
                              at::ScalarType product, bool sums) {
    if (da.scalar_type() != at::kFloat || product != at::kBFloat16 || da.stride(1) != 1 ||
        da_hh.stride(1) != 1)
      return gate_grads_apart(da, da_hh, shared, product, sums);
    RoundGateGrads rounded(da, da_hh, shared);
    rounded.rows_done(0, da.size(0));
    return rounded.finish();
  }

  template <typename Cell>
  static at::Tensor forward(const ForwardCall& call) {
    const at::ScalarType dtype = call.x.scalar_type();
    const auto options = call.x.options().dtype(compute_dtype(dtype));
    const int64_t elem = at::elementSize(compute_dtype(dtype));
    // Training keeps the workspace of every row; inference projects a chunk of steps at a time
    // into one reused buffer; a cell that saves nothing projects into its output (when the
    // output is in the compute type; else into chunks, as inference does).
    const bool in_output = Cell::kGatesInOutput && compute_dtype(dtype) == dtype;
    const bool whole = (call.train && !Cell::kGatesInOutput) || in_output;
    const int64_t ld = Cell::kGatesInOutput ? call.d.R : call.train ? call.W : call.d.G;
    at::Tensor ws;
    if (!in_output) {
      const ProjectionChunks chunks(call.plan, whole, ld * elem);
      ws = whole ? large_buffer({call.plan.P, call.W}, options)
                 : at::empty({chunks.max_rows(), ld}, options);
    }
    const at::Tensor rec =
        Cell::kRecurrentApart ? at::empty({call.plan.N, call.d.G}, options) : at::Tensor();
    const at::Tensor h_pre =
        call.proj && !call.train ? at::empty({call.plan.N, call.d.H}, options) : at::Tensor();
    // The cell state in the compute type for the whole call; c_n is rounded at the end.
    const at::Tensor c =
        call.c.defined() && compute_dtype(dtype) != dtype ? call.c.to(options.dtype()) : call.c;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rnnkit_cpu_forward", [&] {
      using compute_t = at::opmath_type<scalar_t>;
      forward_steps<Cell, scalar_t, compute_t>(
          call, {.gates = ptr<compute_t>(in_output ? call.output : ws),
                 .ld = ld,
                 .whole = whole,
                 .rec = ptr<compute_t>(rec),
                 .h_pre = ptr<compute_t>(h_pre),
                 .c = ptr<compute_t>(c)});
    });
    if (c.defined() && !c.is_same(call.c)) call.c.copy_(c);
    return Cell::kGatesInOutput ? at::Tensor() : ws;
  }

  // Returns the gate gradients rounded for the weight products where the time loop rounded them
  // (gate_grads.h); else nothing.
  template <typename Cell>
  static GateGrads backward(const BackwardCall& call) {
    GateGrads rounded;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.output.scalar_type(),
                                    "rnnkit_cpu_backward", [&] {
                                      rounded =
                                          backward_steps<Cell, scalar_t, at::opmath_type<scalar_t>>(
                                              call);
                                    });
    return rounded;
  }

  // prev, cand and init in the compute dtype; mask in the storage dtype (the input's), which the
  // dispatch goes by. Without a mask only p is read, and the compute dtype serves as storage.
  static void replay_zoneout(const at::Tensor& prev, const at::Tensor& cand,
                             const at::Tensor& init, const at::Tensor& mask, double p,
                             const SequencePlan& plan) {
    const at::ScalarType dtype = mask.defined() ? mask.scalar_type() : prev.scalar_type();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rnnkit_cpu_replay_zoneout",
                                    [&] {
      using compute_t = at::opmath_type<scalar_t>;
      const zoneout::Replay<scalar_t, compute_t> r{
          ptr<compute_t>(cand), cand.stride(0),      ptr<compute_t>(init),
          ptr<scalar_t>(mask),  compute_t(p),        ptr<compute_t>(prev),
          plan.batch_sizes.data(), plan.offsets.data(), plan.T(), plan.N, prev.size(1),
          plan.reverse};
      for_each_unit<compute_t>(plan.N, prev.size(1), [&](int64_t n, int64_t j, auto lanes) {
        zoneout::replay<decltype(lanes)>(r, n, j);
      });
    });
  }
};

}  // namespace cpu
}  // namespace rnnkit

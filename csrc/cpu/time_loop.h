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
// Backward: per step the cell's pointwise pass and one recurrent product; the gradients of the
// input and of the weights follow in common/layer.h, one large product each over all steps.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstring>
#include <vector>

#include "../common/layer.h"
#include "blas.h"
#include "chunks.h"
#include "loops.h"
#include "memory.h"
#include "recurrent.h"

namespace rnnkit {
namespace cpu {

// gates: the buffer the input projection goes into, row stride ld (the workspace [P, W] in
// training; the chunk scratch [chunk rows, G] in inference; the output [P, R] for a cell that
// saves nothing). rec: [N, G] for Cell::kRecurrentApart. h_pre: [N, H] scratch with a
// projection in inference.
template <typename scalar_t>
struct ForwardBuffers {
  scalar_t* gates;
  int64_t ld;
  bool whole;  // gates holds every packed row (else one chunk of them)
  scalar_t* rec;
  scalar_t* h_pre;
};

template <typename Cell, typename scalar_t>
void forward_steps(const ForwardCall& call, const ForwardBuffers<scalar_t>& buf) {
  const SequencePlan& plan = call.plan;
  const int64_t I = call.d.I, H = call.d.H, R = call.d.R, G = call.d.G, ld = buf.ld;
  const scalar_t* x = ptr<scalar_t>(call.x);
  const scalar_t* w_ih = ptr<scalar_t>(call.w_ih);
  const scalar_t* w_hr = ptr<scalar_t>(call.w_hr);
  scalar_t* out = ptr<scalar_t>(call.output);
  // Both biases go to the input side, except b_hh of a cell that keeps the recurrent part apart.
  const std::vector<scalar_t> bias = bias_sum<scalar_t>(
      G, ptr<scalar_t>(call.b_ih), Cell::kRecurrentApart ? nullptr : ptr<scalar_t>(call.b_hh));
  const RecurrentStep<scalar_t> rec(ptr<scalar_t>(call.w_hh), Cell::kGates, H, R, plan.N,
                                    plan.T());
  const bool project = Cell::kProjection && call.proj;
  const int64_t h_pre_at = [&] {
    if constexpr (Cell::kProjection) return typename Cell::Layout{H, true}.h_pre();
    return int64_t(0);
  }();

  StepForward<scalar_t> base{};
  base.ld_gates = ld;
  base.rec = buf.rec;
  base.bias = bias.data();
  base.rec_bias = Cell::kRecurrentApart ? ptr<scalar_t>(call.b_hh) : nullptr;
  base.c = ptr<scalar_t>(call.c);
  base.ld_h_pre = call.train ? ld : H;
  base.H = H;
  base.R = R;
  base.save = call.train;
  base.act = call.act;
  const auto body_of = [&](const StepState<scalar_t>& st) {
    StepForward<scalar_t> io = base;
    io.gates = st.gates;
    io.h_prev = st.h_prev;
    io.h_next = st.h_next;
    io.out = out + st.row * R;
    if (project) io.h_pre = call.train ? st.gates + h_pre_at : buf.h_pre;
    const zoneout::Step<scalar_t> z =
        step_zoneout<scalar_t>(call.zoneout, st.t, plan.N, R, H, project);
    return [io, z](int64_t n, int64_t j, auto lanes) {
      zoneout::forward<Cell, decltype(lanes)>(io, z, n, j);
    };
  };
  const auto acc_of = [&](const StepState<scalar_t>& st) {
    return Cell::kRecurrentApart ? buf.rec : st.gates;
  };
  const int64_t ld_acc = Cell::kRecurrentApart ? G : ld;
  // With a projection: out = h_pre w_hr^T, which is also the next step's state.
  const auto finish = [&](const StepState<scalar_t>& st) {
    scalar_t* out_t = out + st.row * R;  // [bs, R]
    gemm<scalar_t>(false, true, st.bs, R, H, 1, call.train ? st.gates + h_pre_at : buf.h_pre,
                   base.ld_h_pre, w_hr, H, 0, out_t, R);
    if (call.zoneout.h()) {  // zoneout mixes the projected h
      const auto z = step_zoneout<scalar_t>(call.zoneout, st.t, plan.N, R, H, false).h;
      for (int64_t n = 0; n < st.bs; ++n)
        for (int64_t r = 0; r < R; ++r)
          out_t[n * R + r] = zoneout::mix(z.template at<Lanes<scalar_t, scalar_t>>(n, r),
                                          st.h_prev[n * R + r], out_t[n * R + r]);
    }
    std::memcpy(st.h_next, out_t, sizeof(scalar_t) * st.bs * R);
  };

  StateBuffers<scalar_t> states(ptr<scalar_t>(call.h), plan.N, R);
  const ProjectionChunks chunks(plan, buf.whole, ld * int64_t(sizeof(scalar_t)));
  for (int64_t k = 0; k < chunks.count(); ++k) {
    const int64_t first_row = chunks.first_row(k);
    gemm<scalar_t>(false, true, chunks.rows(k), G, I, 1, x + first_row * I, I, w_ih, I, 0,
                   buf.gates + (buf.whole ? first_row * ld : 0), ld);
    const auto state_at = [&](int64_t s) {
      const int64_t t = plan.forward_step(s), row = plan.offsets[t];
      return StepState<scalar_t>{t, plan.batch_sizes[t], row,
                                 buf.gates + (buf.whole ? row : row - first_row) * ld,
                                 states.prev(s), states.next(s)};
    };
    const int64_t s0 = chunks.first_step(k), s1 = chunks.end_step(k);
    if constexpr (Cell::kProjection) {
      if (project) {
        rec.run_steps(s0, s1, state_at, acc_of, ld_acc, !Cell::kRecurrentApart, body_of, finish);
        continue;
      }
    }
    rec.run_steps(s0, s1, state_at, acc_of, ld_acc, !Cell::kRecurrentApart, body_of, nullptr);
  }
  states.finish(plan);
}

template <typename Cell, typename scalar_t>
void backward_steps(const BackwardCall& call) {
  const SequencePlan& plan = call.plan;
  const int64_t H = call.d.H, R = call.d.R, G = call.d.G;
  const scalar_t* w_hr = ptr<scalar_t>(call.w_hr);
  scalar_t* dh = ptr<scalar_t>(call.dh);
  scalar_t* da_rec = ptr<scalar_t>(call.da_rec);
  scalar_t* dh_pre = ptr<scalar_t>(call.dh_pre);
  scalar_t* carry_h = ptr<scalar_t>(call.carry_h);
  const PackedB<scalar_t> w_hh(/*trans_b=*/false, plan.N, R, G, ptr<scalar_t>(call.w_hh), R,
                               plan.T() >= kPackFromSteps);
  const StepBackward<scalar_t> first = step_backward<scalar_t>(call);
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    StepBackward<scalar_t> io = first.at_row(row, R, G);
    const bool project = Cell::kProjection && call.proj;
    zoneout::Step<scalar_t> z = step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, project);
    z.carry_h = carry_h;
    if (project) {
      // dr = dL/d(output of this step) = carried dh + grad_output; dh_pre = dr w_hr.
      scalar_t* dr_t = ptr<scalar_t>(call.dr) + row * R;
      const scalar_t* gout_t = io.dh_out;
      for (int64_t k = 0; k < bs * R; ++k) dr_t[k] = dh[k] + (gout_t ? gout_t[k] : scalar_t(0));
      if (call.zoneout.h()) {  // through the mix of the projected h (forward's finish)
        const auto zh = step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, false).h;
        for (int64_t n = 0; n < bs; ++n)
          for (int64_t r = 0; r < R; ++r) {
            const auto s = zoneout::split(zh.template at<Lanes<scalar_t, scalar_t>>(n, r),
                                          dr_t[n * R + r]);
            carry_h[n * R + r] = s.carry;
            dr_t[n * R + r] = s.cand;
          }
      }
      gemm<scalar_t>(false, false, bs, H, R, 1, dr_t, R, w_hr, H, 0, dh_pre, H);
      io.dh_out = dh_pre;
      io.dh = nullptr;
    }
    for_each_unit<scalar_t>(bs, H, [&](int64_t n, int64_t j, auto lanes) {
      zoneout::backward<Cell, decltype(lanes)>(io, z, n, j);
    });
    // dh_prev = da_rec w_hh (+ the direct part the pointwise pass stored) (+ zoneout's carry)
    w_hh.multiply(bs, da_rec + row * G, G, Cell::kDirectGrad ? 1 : 0, dh, R);
    if (call.zoneout.h())
      for (int64_t k = 0; k < bs * R; ++k) dh[k] += carry_h[k];
  }
}

// The CPU backend of common/layer.h.
struct Backend {
  static constexpr bool kHalfTypes = false;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static void check_device(const at::Tensor&, const char*) {}
  static at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return large_buffer(sizes, options);
  }

  template <typename Cell>
  static at::Tensor forward(const ForwardCall& call) {
    const auto options = call.x.options();
    // Training keeps the workspace of every row; inference projects a chunk of steps at a time
    // into one reused buffer; a cell that saves nothing projects into its output.
    const bool whole = call.train || Cell::kGatesInOutput;
    const int64_t ld = Cell::kGatesInOutput ? call.d.R : call.train ? call.W : call.d.G;
    at::Tensor ws;
    if (!Cell::kGatesInOutput) {
      const ProjectionChunks chunks(call.plan, whole, ld * call.x.element_size());
      ws = call.train ? large_buffer({call.plan.P, call.W}, options)
                      : at::empty({chunks.max_rows(), call.d.G}, options);
    }
    const at::Tensor rec =
        Cell::kRecurrentApart ? at::empty({call.plan.N, call.d.G}, options) : at::Tensor();
    const at::Tensor h_pre =
        call.proj && !call.train ? at::empty({call.plan.N, call.d.H}, options) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(call.x.scalar_type(), "rnnkit_cpu_forward", [&] {
      forward_steps<Cell, scalar_t>(
          call, {.gates = ptr<scalar_t>(Cell::kGatesInOutput ? call.output : ws),
                 .ld = ld,
                 .whole = whole,
                 .rec = ptr<scalar_t>(rec),
                 .h_pre = ptr<scalar_t>(h_pre)});
    });
    return ws;
  }

  template <typename Cell>
  static void backward(const BackwardCall& call) {
    AT_DISPATCH_FLOATING_TYPES(call.output.scalar_type(), "rnnkit_cpu_backward",
                               [&] { backward_steps<Cell, scalar_t>(call); });
  }

  static void replay_zoneout(const at::Tensor& prev, const at::Tensor& cand,
                             const at::Tensor& init, const at::Tensor& mask, double p,
                             const SequencePlan& plan) {
    AT_DISPATCH_FLOATING_TYPES(prev.scalar_type(), "rnnkit_cpu_replay_zoneout", [&] {
      const zoneout::Replay<scalar_t> r{
          ptr<scalar_t>(cand), cand.stride(0),      ptr<scalar_t>(init),
          ptr<scalar_t>(mask), at::opmath_type<scalar_t>(p), ptr<scalar_t>(prev),
          plan.batch_sizes.data(), plan.offsets.data(), plan.T(), plan.N, prev.size(1),
          plan.reverse};
      for_each_unit<scalar_t>(plan.N, prev.size(1), [&](int64_t n, int64_t j, auto lanes) {
        zoneout::replay<decltype(lanes)>(r, n, j);
      });
    });
  }
};

}  // namespace cpu
}  // namespace rnnkit

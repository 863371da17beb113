// The CUDA backend's one time loop, forward and backward through time, for every cell
// (common/cell.h): the same plan, semantics and workspace as the CPU's (cpu/time_loop.h).
//
// Forward: one cuBLAS product (through ATen) for the input projection of every step, the biases
// folded in (project_input); then per step one recurrent product, accumulated in place onto the
// step's projection (or into a buffer of its own, Cell::kRecurrentApart), and one fused
// pointwise kernel (the cell's forward in opmath_type); with a projection, one more product.
// Backward: per step one fused pointwise kernel and one recurrent product; the gradients of the
// input and of the weights follow in common/layer.h. The loops read batch sizes from the host
// plan (copied once, before the loop): no host synchronisation inside them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "../common/layer.h"
#include "blas.cuh"
#include "launch.cuh"
#include "persistent.cuh"

namespace rnnkit {
namespace cuda {

template <typename Cell, typename scalar_t>
struct ForwardUnit {
  StepForward<scalar_t> io;
  zoneout::Step<scalar_t> z;
  __device__ void operator()(int64_t n, int64_t j) const {
    zoneout::forward<Cell, DeviceLanes<scalar_t>>(io, z, n, j);
  }
};

template <typename Cell, typename scalar_t>
struct BackwardUnit {
  StepBackward<scalar_t> io;
  zoneout::Step<scalar_t> z;
  __device__ void operator()(int64_t n, int64_t j) const {
    zoneout::backward<Cell, DeviceLanes<scalar_t>>(io, z, n, j);
  }
};

template <typename scalar_t>
struct ReplayUnit {
  zoneout::Replay<scalar_t> r;
  __device__ void operator()(int64_t n, int64_t j) const {
    zoneout::replay<DeviceLanes<scalar_t>>(r, n, j);
  }
};

// Zoneout of the projected h (the time loop's, after the projection): out = mix(m, h, out), h
// [bs, R] still the previous state.
template <typename scalar_t>
struct MixUnit {
  zoneout::State<scalar_t> z;
  const scalar_t* h;
  scalar_t* out;
  __device__ void operator()(int64_t n, int64_t r) const {
    using L = DeviceLanes<scalar_t>;
    const int64_t k = n * z.F + r;
    L::store(out + k, zoneout::mix(z.template at<L>(n, r), L::load(h + k), L::load(out + k)));
  }
};

// The row passes of a row-norm cell (common/row_norm.h), one block per row.
template <typename Cell, typename scalar_t>
struct ForwardRow {
  StepForward<scalar_t> io;
  zoneout::Step<scalar_t> z;
  __device__ void operator()(int64_t n) const {
    zoneout::forward_row<Cell>(io, z, n, DeviceRow<scalar_t>{});
  }
};

template <typename Cell, typename scalar_t>
struct BackwardRow {
  StepBackward<scalar_t> io;
  zoneout::Step<scalar_t> z;
  __device__ void operator()(int64_t n) const {
    zoneout::backward_row<Cell>(io, z, n, DeviceRow<scalar_t>{});
  }
};

// pre [P, G] (a column slice of the gate buffer) = x w_ih^T + the biases of the input side: both,
// except b_hh of a cell that keeps the recurrent part apart (its pointwise code adds it there).
// A row-norm cell normalises the bare projection and adds its biases after (its pointwise code).
template <typename Cell>
void project_input(at::Tensor pre, const ForwardCall& call) {
  if constexpr (row_norm<Cell>()) {
    at::mm_out(pre, call.x, call.w_ih.t());
    return;
  }
  const at::Tensor& b_ih = call.b_ih;
  const at::Tensor b_hh = Cell::kRecurrentApart ? at::Tensor() : call.b_hh;
  if (!b_ih.defined() && !b_hh.defined()) {
    at::mm_out(pre, call.x, call.w_ih.t());
    return;
  }
  const at::Tensor bias = b_ih.defined() && b_hh.defined() ? b_ih + b_hh
                          : b_ih.defined()                 ? b_ih
                                                           : b_hh;
  at::addmm_out(pre, bias, call.x, call.w_ih.t());
}

// gates: [P, ld] the buffer of the pre-activations (the workspace, or the output of a cell that
// saves nothing); rec: [N, G] with Cell::kRecurrentApart.
template <typename Cell, typename scalar_t>
void forward_steps(const ForwardCall& call, scalar_t* gates, int64_t ld, scalar_t* rec) {
  const SequencePlan& plan = call.plan;
  const int64_t H = call.d.H, R = call.d.R, G = call.d.G;
  scalar_t* h = ptr<scalar_t>(call.h);
  scalar_t* out = ptr<scalar_t>(call.output);
  const scalar_t* w_hh = ptr<scalar_t>(call.w_hh);
  const scalar_t* w_hr = ptr<scalar_t>(call.w_hr);
  const bool project = Cell::kProjection && call.proj;
  int64_t h_pre_at = 0;
  if constexpr (Cell::kProjection) h_pre_at = typename Cell::Layout{H, true}.h_pre();

  StepForward<scalar_t> io{};
  io.ld_gates = ld;
  io.rec = rec;
  io.rec_bias = Cell::kRecurrentApart ? ptr<scalar_t>(call.b_hh) : nullptr;
  if constexpr (row_norm<Cell>()) io.bias = ptr<scalar_t>(call.b_ih);  // see project_input
  io.norm = ptr<scalar_t>(call.norm);
  io.h_prev = h;  // the state is updated in place: each step's product has read it already
  io.h_next = h;
  io.c = ptr<scalar_t>(call.c);
  io.ld_h_pre = ld;
  io.H = H;
  io.R = R;
  io.save = true;  // this backend keeps the whole workspace in inference too
  io.act = call.act;
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.forward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    scalar_t* gates_t = gates + row * ld;  // [bs, ld]
    if (Cell::kRecurrentApart) {
      gemm<scalar_t>(false, true, bs, G, R, 1, h, R, w_hh, R, 0, rec, G);
    } else {
      gemm<scalar_t>(false, true, bs, G, R, 1, h, R, w_hh, R, 1, gates_t, ld);
    }
    io.gates = gates_t;
    io.out = out + row * R;
    io.h_pre = project ? gates_t + h_pre_at : nullptr;
    if constexpr (row_norm<Cell>()) {
      zoneout::Step<scalar_t> z = step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, false);
      z.prev_c = ptr<scalar_t>(call.prev_c);
      for_each_row(bs, ForwardRow<Cell, scalar_t>{io, z});
    } else {
      for_each_unit(bs, H, ForwardUnit<Cell, scalar_t>{
                               io, step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, project)});
    }
    if (project) {
      scalar_t* out_t = out + row * R;  // [bs, R]
      gemm<scalar_t>(false, true, bs, R, H, 1, gates_t + h_pre_at, ld, w_hr, H, 0, out_t, R);
      if (call.zoneout.h())
        for_each_unit(bs, R, MixUnit<scalar_t>{
                                 step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, false).h,
                                 h, out_t});
      C10_CUDA_CHECK(cudaMemcpyAsync(h, out_t, sizeof(scalar_t) * bs * R,
                                     cudaMemcpyDeviceToDevice, at::cuda::getCurrentCUDAStream()));
    }
  }
}

template <typename Cell, typename scalar_t>
void backward_steps(const BackwardCall& call) {
  const SequencePlan& plan = call.plan;
  const int64_t H = call.d.H, R = call.d.R, G = call.d.G;
  const scalar_t* w_hh = ptr<scalar_t>(call.w_hh);
  const scalar_t* w_hr = ptr<scalar_t>(call.w_hr);
  scalar_t* dh = ptr<scalar_t>(call.dh);
  scalar_t* da_rec = ptr<scalar_t>(call.da_rec);
  const StepBackward<scalar_t> first = step_backward<scalar_t>(call);
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    StepBackward<scalar_t> io = first.at_row(row, R, G);
    const bool project = Cell::kProjection && call.proj;
    zoneout::Step<scalar_t> z = step_zoneout<scalar_t>(call.zoneout, t, plan.N, R, H, project);
    z.carry_h = ptr<scalar_t>(call.carry_h);
    z.carry_c = ptr<scalar_t>(call.carry_c);
    if (project) {
      // dr = dL/d(output of this step) = carried dh + grad_output; dh_pre = dr w_hr.
      at::Tensor dr_t = call.dr.narrow(0, row, bs);
      const at::Tensor dh_t = call.dh.narrow(0, 0, bs);
      if (call.grad_output.defined()) {
        at::add_out(dr_t, dh_t, call.grad_output.narrow(0, row, bs));
      } else {
        dr_t.copy_(dh_t);
      }
      if (call.zoneout.h()) {  // through the mix of the projected h (forward)
        const at::Tensor m = call.zoneout.mask_h.defined()
                                 ? call.zoneout.mask_h[t].narrow(0, 0, bs)
                                 : at::scalar_tensor(call.zoneout.p_h, dr_t.options());
        at::Tensor carry_t = call.carry_h.narrow(0, 0, bs);
        at::mul_out(carry_t, dr_t, m);
        dr_t.mul_(1 - m);
      }
      gemm<scalar_t>(false, false, bs, H, R, 1, ptr<scalar_t>(call.dr) + row * R, R, w_hr, H, 0,
                     ptr<scalar_t>(call.dh_pre), H);
      io.dh_out = ptr<scalar_t>(call.dh_pre);
      io.dh = nullptr;
    }
    if constexpr (row_norm<Cell>()) {
      for_each_row(bs, BackwardRow<Cell, scalar_t>{io, z});
    } else {
      for_each_unit(bs, H, BackwardUnit<Cell, scalar_t>{io, z});
    }
    // dh_prev = da_rec w_hh (+ the direct part the pointwise kernel stored) (+ zoneout's carry)
    gemm<scalar_t>(false, false, bs, R, G, 1, da_rec + row * G, G, w_hh, R,
                   Cell::kDirectGrad ? 1 : 0, dh, R);
    if (call.zoneout.h()) call.dh.narrow(0, 0, bs).add_(call.carry_h.narrow(0, 0, bs));
  }
}

// The persistent loop's name for a cell, or nothing for a cell it does not have.
template <typename Cell>
constexpr std::optional<persistent::Cell> persistent_cell() {
  if constexpr (std::is_same_v<Cell, cells::Lstm>) return persistent::Cell::Lstm;
  if constexpr (std::is_same_v<Cell, cells::Gru>) return persistent::Cell::Gru;
  if constexpr (std::is_same_v<Cell, cells::Rnn>) return persistent::Cell::Rnn;
  return std::nullopt;
}

// Runs the forward steps in the persistent loop when it is on and fits; false: the caller runs
// the step loop. ws: the workspace with the input projection in it (undefined for a cell that
// keeps its gates in the output).
template <typename Cell>
bool persistent_forward(const ForwardCall& call, const at::Tensor& ws) {
  constexpr auto cell = persistent_cell<Cell>();
  if constexpr (!cell.has_value()) {
    return false;
  } else {
    return persistent::forward({*cell, &call.plan, call.w_hh, call.h0, call.output, call.h,
                                call.c, ws, Cell::kRecurrentApart ? call.b_hh : at::Tensor(),
                                call.act, call.proj ? "proj_size is not supported" : nullptr});
  }
}

// The backward steps in the persistent loop, as persistent_forward.
template <typename Cell>
bool persistent_backward(const BackwardCall& call) {
  constexpr auto cell = persistent_cell<Cell>();
  if constexpr (!cell.has_value()) {
    return false;
  } else {
    // dgates: what passes through W_hh (da_rec); dx: the input side, where it is apart (GRU).
    return persistent::backward(
        {*cell, &call.plan, call.w_hh, call.h_prev, call.c_prev, call.output, call.ws,
         call.grad_output, call.dh, call.dc, call.da_rec,
         Cell::kRecurrentApart ? call.da : at::Tensor(), call.act,
         call.proj ? "proj_size is not supported" : nullptr});
  }
}

// The CUDA backend of common/layer.h.
struct Backend {
  static constexpr bool kHalfTypes = true;
  using Guard = c10::cuda::CUDAGuard;
  static void check_device(const at::Tensor& input, const char* op) { check_on_cuda(input, op); }
  // The workspace and the gradients through time are in the input's dtype on CUDA.
  static at::ScalarType compute_dtype(at::ScalarType t) { return t; }
  static at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }

  // The gate gradients for the weight products, and their sums (weight_grads.h).
  static GateGrads gate_grads(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared,
                              at::ScalarType product, bool sums) {
    return gate_grads_apart(da, da_hh, shared, product, sums);
  }

  template <typename Cell>
  static at::Tensor forward(const ForwardCall& call) {
    const auto options = call.x.options();
    const at::Tensor ws =
        Cell::kGatesInOutput ? at::Tensor() : at::empty({call.plan.P, call.W}, options);
    const at::Tensor& gates = Cell::kGatesInOutput ? call.output : ws;
    const at::Tensor rec =
        Cell::kRecurrentApart ? at::empty({call.plan.N, call.d.G}, options) : at::Tensor();
    project_input<Cell>(gates.narrow(1, 0, call.d.G), call);
    // The one place where a call chooses its path: the persistent loop (one cooperative launch
    // for every step, cuda/persistent.cu) where it is switched on and the shape fits, else the
    // step loop below.
    // Zoneout is a step of the step loop only: the persistent loop has no masks.
    if (!call.zoneout.on() && persistent_forward<Cell>(call, ws)) return ws;
    RNNKIT_DISPATCH_CUDA(call.x.scalar_type(), "rnnkit_cuda_forward", [&] {
      forward_steps<Cell, scalar_t>(call, ptr<scalar_t>(gates), gates.size(1),
                                    ptr<scalar_t>(rec));
    });
    // Without train the workspace goes back to the caching allocator here (the CPU kernels never
    // hold the whole sequence's gates in inference; this backend still does, during the call).
    return ws;
  }

  // (The gate gradients are rounded for the weight products after the loop: returns nothing.)
  template <typename Cell>
  static GateGrads backward(const BackwardCall& call) {
    // The one place where backward chooses its path, as forward above.
    if (!call.zoneout.on() && persistent_backward<Cell>(call)) return {};
    RNNKIT_DISPATCH_CUDA(call.output.scalar_type(), "rnnkit_cuda_backward",
                         [&] { backward_steps<Cell, scalar_t>(call); });
    return {};
  }

  static void replay_zoneout(const at::Tensor& prev, const at::Tensor& cand,
                             const at::Tensor& init, const at::Tensor& mask, double p,
                             const SequencePlan& plan) {
    // The plan's batch sizes and offsets on the device: one copy, [2, T].
    std::vector<int64_t> host(plan.batch_sizes);
    host.insert(host.end(), plan.offsets.begin(), plan.offsets.end());
    const at::Tensor steps =
        at::tensor(host, at::TensorOptions().dtype(at::kLong)).to(prev.device());
    RNNKIT_DISPATCH_CUDA(prev.scalar_type(), "rnnkit_cuda_replay_zoneout", [&] {
      const int64_t* sizes = steps.data_ptr<int64_t>();
      const zoneout::Replay<scalar_t> r{ptr<scalar_t>(cand),
                                        cand.stride(0),
                                        ptr<scalar_t>(init),
                                        ptr<scalar_t>(mask),
                                        static_cast<at::opmath_type<scalar_t>>(p),
                                        ptr<scalar_t>(prev),
                                        sizes,
                                        sizes + plan.T(),
                                        plan.T(),
                                        plan.N,
                                        prev.size(1),
                                        plan.reverse};
      for_each_unit(plan.N, prev.size(1), ReplayUnit<scalar_t>{r});
    });
  }
};

}  // namespace cuda
}  // namespace rnnkit

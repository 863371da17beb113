// LSTM on CUDA: the whole-sequence forward and backward of one layer and direction, and the cell
// step built on them (common/cells.h). Same plan, semantics and workspace as cpu/lstm.cpp:
//
// Forward: one cuBLAS product (through ATen) for the input projection of every step, both
// biases folded in; then per step one recurrent product accumulated in place into the step's
// workspace rows and one fused pointwise kernel (gates::lstm_forward in opmath_type).
// Backward: per step one fused pointwise kernel (gates::lstm_backward) and one recurrent
// product; then the gradients of the input and of every weight as one large product each.
//
// Workspace per packed row: [i, f, g, o | c | h_pre] (5H, 6H with a projection), as on the CPU.
// The time loop reads batch sizes from the host plan (copied once, before the loop): no host
// synchronisation inside it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../common/cells.h"
#include "../common/gates.h"
#include "../common/plan.h"
#include "../common/shapes.h"
#include "../common/weight_grads.h"
#include "blas.cuh"
#include "launch.cuh"
#include "persistent.cuh"

namespace rnnkit {
namespace cuda {
namespace {

using at::Tensor;
using c10::optional;

constexpr const char* kOp = "rnnkit::lstm";

// Pointwise forward of one step, unit j of active row n.
template <typename scalar_t>
struct LstmForwardStep {
  scalar_t* ws;   // [bs, W]: this step's workspace rows; pre-activations in, [i,f,g,o|c|h_pre] out
  scalar_t* c;    // [N, H]: c_prev in, c out (rows < bs)
  scalar_t* h;    // [N, R]: h out (rows < bs), without a projection only
  scalar_t* out;  // [bs, R]: this step's output rows, without a projection only
  int64_t H, R, W;
  bool proj;

  __device__ void operator()(int64_t n, int64_t j) const {
    scalar_t* g = ws + n * W;
    const auto r = gates::lstm_forward(load_op(g + j), load_op(g + H + j), load_op(g + 2 * H + j),
                                       load_op(g + 3 * H + j), load_op(c + n * H + j));
    store_op(g + j, r.i);
    store_op(g + H + j, r.f);
    store_op(g + 2 * H + j, r.g);
    store_op(g + 3 * H + j, r.o);
    store_op(g + 4 * H + j, r.c);
    store_op(c + n * H + j, r.c);
    if (proj) {
      store_op(g + 5 * H + j, r.h);
    } else {
      store_op(out + n * R + j, r.h);
      store_op(h + n * R + j, r.h);
    }
  }
};

// Pointwise backward of one step, unit j of active row n.
template <typename scalar_t>
struct LstmBackwardStep {
  const scalar_t* ws;      // [bs, W]: this step's workspace rows
  const scalar_t* c_prev;  // [bs, H]: the cell state this step started from
  const scalar_t* dh_a;    // [bs, H] or null: gradient reaching h_pre (grad_output rows, or dh_pre)
  const scalar_t* dh_b;    // [N, H] or null: the carried gradient of h (without a projection)
  scalar_t* dgates;        // [bs, G]: out, gradients of the pre-activations
  scalar_t* dc;            // [N, H]: gradient of c in, of c_prev out (rows < bs)
  int64_t H, G, W;

  __device__ void operator()(int64_t n, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = ws + n * W;
    acc_t grad_h = dh_a ? load_op(dh_a + n * H + j) : acc_t(0);
    if (dh_b) grad_h += load_op(dh_b + n * H + j);
    const auto r = gates::lstm_backward(grad_h, load_op(dc + n * H + j), load_op(g + j),
                                        load_op(g + H + j), load_op(g + 2 * H + j), load_op(g + 3 * H + j),
                                        load_op(g + 4 * H + j), load_op(c_prev + n * H + j));
    scalar_t* dg = dgates + n * G;
    store_op(dg + j, r.da_i);
    store_op(dg + H + j, r.da_f);
    store_op(dg + 2 * H + j, r.da_g);
    store_op(dg + 3 * H + j, r.da_o);
    store_op(dc + n * H + j, r.dc_prev);
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const optional<Tensor>& w_hr, bool reverse, bool train) {
  check_on_cuda(input, kOp);
  checks::floating(input, true, kOp);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LayerShape d = layer_shape(kOp, 4, input, plan, h0, w_ih, w_hh, b_ih, b_hh, w_hr);
  checks::shape(c0, {plan.N, d.H}, kOp, "c0 (N, H)");
  checks::like(c0, input, kOp, "c0");
  const bool proj = w_hr.has_value();
  const int64_t H = d.H, R = d.R, G = d.G, W = (proj ? 6 : 5) * H;

  const Tensor x = input.contiguous().view({plan.P, d.I});
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = R;
  Tensor output = at::empty(out_sizes, input.options());
  const Tensor out2d = output.view({plan.P, R});
  Tensor h_n = h0.contiguous().clone();
  Tensor c_n = c0.contiguous().clone();
  Tensor ws = at::empty({plan.P, W}, input.options());
  const Tensor wh = w_hh.contiguous();                       // [G, R]
  const Tensor wr = proj ? w_hr->contiguous() : Tensor();  // [R, H]

  // Input projection of every step, both biases folded in: ws[:, :G] = x w_ih^T + b_ih + b_hh.
  Tensor pre = ws.narrow(1, 0, G);
  if (b_ih.has_value() || b_hh.has_value()) {
    const Tensor bias = b_ih.has_value() && b_hh.has_value() ? *b_ih + *b_hh
                        : b_ih.has_value()                   ? *b_ih
                                                             : *b_hh;
    at::addmm_out(pre, bias, x, w_ih.t());
  } else {
    at::mm_out(pre, x, w_ih.t());
  }

  if (!persistent::forward({persistent::Cell::Lstm, &plan, wh, h0.contiguous(), out2d, h_n, c_n,
                            ws, Tensor(), gates::Activation::Tanh,
                            proj ? "proj_size is not supported" : nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_lstm_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.forward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      scalar_t* ws_t = ptr<scalar_t>(ws) + row * W;  // [bs, W]
      gemm<scalar_t>(false, true, bs, G, R, 1, ptr<scalar_t>(h_n), R, ptr<scalar_t>(wh), R, 1,
                     ws_t, W);
      LstmForwardStep<scalar_t> step{ws_t, ptr<scalar_t>(c_n),
                                     ptr<scalar_t>(h_n), ptr<scalar_t>(out2d) + row * R,
                                     H, R, W, proj};
      for_each_unit(bs, H, step);
      if (proj) {
        scalar_t* out_t = ptr<scalar_t>(out2d) + row * R;  // [bs, R]
        gemm<scalar_t>(false, true, bs, R, H, 1, ws_t + 5 * H, W, ptr<scalar_t>(wr), H, 0, out_t, R);
        C10_CUDA_CHECK(cudaMemcpyAsync(ptr<scalar_t>(h_n), out_t, sizeof(scalar_t) * bs * R,
                                       cudaMemcpyDeviceToDevice,
                                       at::cuda::getCurrentCUDAStream()));
      }
    }
  });
  // Without train the workspace goes back to the caching allocator here (the CPU kernels never
  // hold the whole sequence's gates in inference; this backend still does, during the call).
  return {output, h_n, c_n, train ? ws : at::empty({0}, input.options())};
}

// Returns grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias (the same for b_ih and
// b_hh), grad_w_hr ([0] without a projection).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& input, const optional<Tensor>& batch_sizes,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace, bool reverse) {
  constexpr const char* op = "rnnkit::lstm_backward";
  check_on_cuda(input, op);
  checks::floating(input, true, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LayerShape d =
      layer_shape(op, 4, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, w_hr);
  const bool proj = w_hr.has_value();
  const int64_t H = d.H, R = d.R, G = d.G, W = (proj ? 6 : 5) * H;
  checks::shape(c0, {plan.N, H}, op, "c0 (N, H)");
  checks::like(c0, input, op, "c0");
  saved_shapes(op, input, output, R, &workspace, plan.P, W);
  grad_shapes(op, grad_output, output, grad_h_n, h0);
  if (grad_c_n.has_value()) {
    checks::shape(*grad_c_n, c0.sizes(), op, "grad_c_n");
    checks::like(*grad_c_n, input, op, "grad_c_n");
  }

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor out2d = output.contiguous().view({plan.P, R});
  const Tensor ws = workspace.contiguous();
  const Tensor h_prev = previous_states(out2d, h0.contiguous(), plan);
  const Tensor c_prev = previous_states(ws.narrow(1, 4 * H, H), c0.contiguous(), plan).contiguous();
  const Tensor gout =
      grad_output.has_value() ? grad_output->contiguous().view({plan.P, R}) : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor dc = grad_c_n.has_value() ? grad_c_n->contiguous().clone() : at::zeros_like(c0);
  Tensor dgates = at::empty({plan.P, G}, input.options());
  Tensor dr = proj ? at::empty({plan.P, R}, input.options()) : Tensor();
  Tensor dh_pre = proj ? at::empty({plan.N, H}, input.options()) : Tensor();
  const Tensor wh = w_hh.contiguous();                       // [G, R]
  const Tensor wr = proj ? w_hr->contiguous() : Tensor();  // [R, H]

  if (!persistent::backward({persistent::Cell::Lstm, &plan, wh, Tensor(), c_prev, Tensor(), ws,
                             gout, dh, dc, dgates, Tensor(), gates::Activation::Tanh,
                             proj ? "proj_size is not supported" : nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_lstm_backward_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      Tensor dh_t = dh.narrow(0, 0, bs);  // [bs, R]
      const scalar_t* dh_a = gout.defined() ? ptr<scalar_t>(gout) + row * R : nullptr;
      const scalar_t* dh_b = ptr<scalar_t>(dh);
      if (proj) {
        // dr = dL/d(output of this step) = carried dh + grad_output; dh_pre = dr w_hr.
        Tensor dr_t = dr.narrow(0, row, bs);
        if (gout.defined()) {
          at::add_out(dr_t, dh_t, gout.narrow(0, row, bs));
        } else {
          dr_t.copy_(dh_t);
        }
        gemm<scalar_t>(false, false, bs, H, R, 1, ptr<scalar_t>(dr) + row * R, R, ptr<scalar_t>(wr),
                       H, 0, ptr<scalar_t>(dh_pre), H);
        dh_a = ptr<scalar_t>(dh_pre);
        dh_b = nullptr;
      }
      LstmBackwardStep<scalar_t> step{ptr<scalar_t>(ws) + row * W,
                                      ptr<scalar_t>(c_prev) + row * H,
                                      dh_a, dh_b,
                                      ptr<scalar_t>(dgates) + row * G,
                                      ptr<scalar_t>(dc), H, G, W};
      for_each_unit(bs, H, step);
      gemm<scalar_t>(false, false, bs, R, G, 1, ptr<scalar_t>(dgates) + row * G, G,
                     ptr<scalar_t>(wh), R, 0, ptr<scalar_t>(dh), R);
    }
  });
  const WeightGrads g = weight_grads(dgates, dgates, x, h_prev, w_ih, input.sizes());
  Tensor grad_w_hr =
      proj ? at::mm(dr.t(), ws.narrow(1, 5 * H, H)) : at::empty({0}, input.options());
  return {g.input, dh, dc, g.w_ih, g.w_hh, g.b_ih, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CUDA, m) {
  cells::register_lstm<&lstm_forward, &lstm_backward>(m);
}

}  // namespace cuda
}  // namespace rnnkit

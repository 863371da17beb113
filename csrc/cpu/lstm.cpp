// LSTM on the CPU: the whole-sequence forward and backward of one layer and direction, and the
// cell step built on them (common/cells.h).
//
// Forward, per layer and direction:
//   1. one product for the input projection of every step
//   2. per step: one recurrent product accumulated in place, one fused pointwise pass (which
//      also adds both biases)
// Backward: per step one fused pointwise pass and one recurrent product; then the gradients of
// the input and of every weight as one large product each over all steps.
//
// Workspace saved for backward, per packed row: [i, f, g, o | c | h_pre] where i, f, g, o are the
// activated gates (4H), c the new cell state (H), and, with a projection only, h_pre = o ⊙ tanh(c)
// before the projection (H): 5H values per row, 6H with proj_size.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstring>

#include "../common/cells.h"
#include "../common/gates.h"
#include "../common/plan.h"
#include "../common/shapes.h"
#include "../common/weight_grads.h"
#include "blas.h"
#include "loops.h"
#include "memory.h"
#include "recurrent.h"

namespace rnnkit {
namespace cpu {
namespace {

using at::Tensor;
using c10::optional;

constexpr const char* kOp = "rnnkit::lstm";

struct LstmDims {
  int64_t I, H, R, G, W;  // W: workspace row width (5H, or 6H with a projection)
  bool proj;
};

LstmDims lstm_dims(const LayerShape& s, bool proj) {
  return {s.I, s.H, s.R, s.G, (proj ? 6 : 5) * s.H, proj};
}

// Forward over the whole sequence. With train, ws is the workspace [P, W] that backward reads;
// without, ws is scratch for the gates of one chunk of steps (see ProjectionChunks) and only
// the states and the output are written.
template <typename scalar_t>
void forward_kernel(const LstmDims& d, const SequencePlan& plan, bool train,
                    const scalar_t* x,     // [P, I]
                    const scalar_t* w_ih,  // [G, I]
                    const scalar_t* w_hh,  // [G, R]
                    const scalar_t* b_ih,  // [G] or null
                    const scalar_t* b_hh,  // [G] or null
                    const scalar_t* w_hr,  // [R, H] or null
                    scalar_t* out,         // [P, R]
                    scalar_t* h,           // [N, R]: h0 in, h_n out
                    scalar_t* c,           // [N, H]: c0 in, c_n out
                    scalar_t* ws,          // train: [P, W]; else [chunk rows, G]
                    scalar_t* h_pre) {     // [N, H] scratch with a projection and without train
  const int64_t H = d.H, R = d.R, G = d.G, W = train ? d.W : G;
  const std::vector<scalar_t> bias_vec = bias_sum(G, b_ih, b_hh);  // [G]
  const scalar_t* bias = bias_vec.data();

  const RecurrentStep<scalar_t> rec(w_hh, 4, H, R, plan.N, plan.T());
  // One step: gates [bs, W] holds its input projection on entry and accumulates the product.
  const auto acc_of = [](const StepState<scalar_t>& st) { return st.gates; };
  const auto pointwise = [&](const StepState<scalar_t>& st, int64_t n, int64_t j, auto lanes) {
    using L = decltype(lanes);
    scalar_t* g = st.gates + n * W;
    const auto r = gates::lstm_forward(
        L::load(g + j) + L::load(bias + j), L::load(g + H + j) + L::load(bias + H + j),
        L::load(g + 2 * H + j) + L::load(bias + 2 * H + j),
        L::load(g + 3 * H + j) + L::load(bias + 3 * H + j), L::load(c + n * H + j));
    if (train) {
      L::store(g + j, r.i);
      L::store(g + H + j, r.f);
      L::store(g + 2 * H + j, r.g);
      L::store(g + 3 * H + j, r.o);
      L::store(g + 4 * H + j, r.c);
    }
    L::store(c + n * H + j, r.c);
    if (d.proj) {  // h before the projection; finish() projects it
      L::store(train ? g + 5 * H + j : h_pre + n * H + j, r.h);
    } else {
      L::store(out + (st.row + n) * R + j, r.h);
      L::store(st.h_next + n * R + j, r.h);
    }
  };
  if (!d.proj) {
    forward_steps<scalar_t>(plan, train, x, d.I, w_ih, G, ws, W, rec, h, R, acc_of, W, true,
                            pointwise, nullptr);
    return;
  }
  const auto project = [&](const StepState<scalar_t>& st) {
    scalar_t* out_t = out + st.row * R;  // [bs, R]
    gemm<scalar_t>(false, true, st.bs, R, H, 1, train ? st.gates + 5 * H : h_pre,
                   train ? W : H, w_hr, H, 0, out_t, R);
    std::memcpy(st.h_next, out_t, sizeof(scalar_t) * st.bs * R);
  };
  forward_steps<scalar_t>(plan, train, x, d.I, w_ih, G, ws, W, rec, h, R, acc_of, W, true,
                          pointwise, project);
}

template <typename scalar_t>
void backward_kernel(const LstmDims& d, const SequencePlan& plan,
                     const scalar_t* grad_out,  // [P, R] or null
                     const scalar_t* w_hh,      // [G, R]
                     const scalar_t* w_hr,      // [R, H] or null
                     const scalar_t* ws,        // [P, W] from forward
                     const scalar_t* c_prev,    // [P, H]
                     scalar_t* dgates,          // [P, G] out: gradients of the pre-activations
                     scalar_t* dr,              // [P, R] out with a projection: dL/d(output)
                     scalar_t* dh,              // [N, R]: grad_h_n in, grad_h0 out
                     scalar_t* dc,              // [N, H]: grad_c_n in, grad_c0 out
                     scalar_t* dh_pre) {        // [N, H] scratch with a projection
  const int64_t H = d.H, R = d.R, G = d.G, W = d.W;
  const PackedB<scalar_t> w_hh_b(/*trans_b=*/false, plan.N, R, G, w_hh, R,
                                 plan.T() >= kPackFromSteps);
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    const scalar_t* gout_t = grad_out ? grad_out + row * R : nullptr;
    // dh_a (+ dh_b): the gradient reaching h_pre = o ⊙ tanh(c) of this step, [bs, H]
    const scalar_t* dh_a = gout_t;
    const scalar_t* dh_b = dh;
    if (d.proj) {
      scalar_t* dr_t = dr + row * R;
      for (int64_t k = 0; k < bs * R; ++k) dr_t[k] = dh[k] + (gout_t ? gout_t[k] : scalar_t(0));
      gemm<scalar_t>(false, false, bs, H, R, 1, dr_t, R, w_hr, H, 0, dh_pre, H);
      dh_a = dh_pre;
      dh_b = nullptr;
    }
    for_each_unit<scalar_t>(bs, H, [&](int64_t n, int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const scalar_t* g = ws + (row + n) * W;
      V grad_h = dh_a ? L::load(dh_a + n * H + j) : V(0);
      if (dh_b) grad_h = grad_h + L::load(dh_b + n * H + j);
      const auto r = gates::lstm_backward(grad_h, L::load(dc + n * H + j), L::load(g + j),
                                          L::load(g + H + j), L::load(g + 2 * H + j),
                                          L::load(g + 3 * H + j), L::load(g + 4 * H + j),
                                          L::load(c_prev + (row + n) * H + j));
      scalar_t* dg = dgates + (row + n) * G;
      L::store(dg + j, r.da_i);
      L::store(dg + H + j, r.da_f);
      L::store(dg + 2 * H + j, r.da_g);
      L::store(dg + 3 * H + j, r.da_o);
      L::store(dc + n * H + j, r.dc_prev);
    });
    w_hh_b.multiply(bs, dgates + row * G, G, 0, dh, R);  // dh_prev = dgates w_hh
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
    const optional<Tensor>& b_hh, const optional<Tensor>& w_hr, bool reverse, bool train) {
  checks::floating(input, false, kOp);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LstmDims d = lstm_dims(layer_shape(kOp, 4, input, plan, h0, w_ih, w_hh, b_ih, b_hh, w_hr),
                               w_hr.has_value());
  checks::shape(c0, {plan.N, d.H}, kOp, "c0 (N, H)");
  checks::like(c0, input, kOp, "c0");

  const Tensor x = input.contiguous();
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = d.R;
  Tensor output = large_buffer(out_sizes, input.options());
  Tensor h_n = h0.contiguous().clone();
  Tensor c_n = c0.contiguous().clone();
  const ProjectionChunks chunks(plan, train, d.G * input.element_size());
  Tensor ws = train ? large_buffer({plan.P, d.W}, input.options())
                    : at::empty({chunks.max_rows(), d.G}, input.options());
  Tensor h_pre = d.proj && !train ? at::empty({plan.N, d.H}, input.options()) : Tensor();
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : Tensor();
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : Tensor();
  const Tensor wr = w_hr.has_value() ? w_hr->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_lstm_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    forward_kernel<scalar_t>(d, plan, train, ptr(x), ptr(wi), ptr(wh), ptr(bi), ptr(bh), ptr(wr),
                             ptr(output), ptr(h_n), ptr(c_n), ptr(ws), ptr(h_pre));
  });
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
  checks::floating(input, false, op);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LstmDims d = lstm_dims(
      layer_shape(op, 4, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, w_hr),
      w_hr.has_value());
  checks::shape(c0, {plan.N, d.H}, op, "c0 (N, H)");
  checks::like(c0, input, op, "c0");
  saved_shapes(op, input, output, d.R, &workspace, plan.P, d.W);
  grad_shapes(op, grad_output, output, grad_h_n, h0);
  if (grad_c_n.has_value()) {
    checks::shape(*grad_c_n, c0.sizes(), op, "grad_c_n");
    checks::like(*grad_c_n, input, op, "grad_c_n");
  }

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor out2d = output.contiguous().view({plan.P, d.R});
  const Tensor ws = workspace.contiguous();
  const Tensor h_prev = previous_states(out2d, h0.contiguous(), plan);
  const Tensor c_prev = previous_states(ws.narrow(1, 4 * d.H, d.H), c0, plan).contiguous();
  const Tensor gout = grad_output.has_value() ? grad_output->contiguous() : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor dc = grad_c_n.has_value() ? grad_c_n->contiguous().clone() : at::zeros_like(c0);
  Tensor dgates = large_buffer({plan.P, d.G}, input.options());
  Tensor dr = d.proj ? large_buffer({plan.P, d.R}, input.options()) : Tensor();
  Tensor dh_pre = d.proj ? at::empty({plan.N, d.H}, input.options()) : Tensor();
  const Tensor wh = w_hh.contiguous();
  const Tensor wr = w_hr.has_value() ? w_hr->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_lstm_backward_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_kernel<scalar_t>(d, plan, ptr(gout), ptr(wh), ptr(wr), ptr(ws), ptr(c_prev),
                              ptr(dgates), ptr(dr), ptr(dh), ptr(dc), ptr(dh_pre));
  });
  const WeightGrads g = weight_grads(dgates, dgates, x, h_prev, w_ih, input.sizes());
  Tensor grad_w_hr = d.proj ? at::mm(dr.t(), ws.narrow(1, 5 * d.H, d.H))
                            : at::empty({0}, input.options());
  return {g.input, dh, dc, g.w_ih, g.w_hh, g.b_ih, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  cells::register_lstm<&lstm_forward, &lstm_backward>(m);
}

}  // namespace cpu
}  // namespace rnnkit

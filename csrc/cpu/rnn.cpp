// Elman RNN (tanh or relu) on the CPU: the whole-sequence forward and backward of one layer and
// direction, and the cell step built on them (common/cells.h). The pre-activations accumulate in
// the output buffer itself and the activation is applied in place, so the forward saves nothing
// beyond its output: backward needs only h of every step.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

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

constexpr const char* kOp = "rnnkit::rnn";

template <typename scalar_t>
void forward_kernel(const LayerShape& d, const SequencePlan& plan, gates::Activation act,
                    const scalar_t* x,     // [P, I]
                    const scalar_t* w_ih,  // [H, I]
                    const scalar_t* w_hh,  // [H, H]
                    const scalar_t* b_ih,  // [H] or null
                    const scalar_t* b_hh,  // [H] or null
                    scalar_t* out,         // [P, H]: pre-activations (biases not yet added), then h
                    scalar_t* h) {         // [N, H]: h0 in, h_n out
  const int64_t H = d.H;
  const std::vector<scalar_t> bias_vec = bias_sum(H, b_ih, b_hh);  // [H]
  const scalar_t* bias = bias_vec.data();
  const RecurrentStep<scalar_t> rec(w_hh, 1, H, H, plan.N, plan.T());
  // One step: its rows of out hold the input projection and accumulate the product.
  const auto acc_of = [](const StepState<scalar_t>& st) { return st.gates; };
  const auto pointwise = [&](const StepState<scalar_t>& st, int64_t n, int64_t j, auto lanes) {
    using L = decltype(lanes);
    const auto h_t = gates::rnn_forward(L::load(st.gates + n * H + j) + L::load(bias + j), act);
    L::store(st.gates + n * H + j, h_t);
    L::store(st.h_next + n * H + j, h_t);
  };
  // The output is the layer's buffer: the whole sequence's projection goes into it at once.
  forward_steps<scalar_t>(plan, /*whole=*/true, x, d.I, w_ih, H, out, H, rec, h, H, acc_of, H,
                          true, pointwise, nullptr);
}

template <typename scalar_t>
void backward_kernel(const LayerShape& d, const SequencePlan& plan, gates::Activation act,
                     const scalar_t* grad_out,  // [P, H] or null
                     const scalar_t* w_hh,      // [H, H]
                     const scalar_t* out,       // [P, H] from forward
                     scalar_t* da,              // [P, H] out: gradients of the pre-activations
                     scalar_t* dh) {            // [N, H]: grad_h_n in, grad_h0 out
  const int64_t H = d.H;
  const PackedB<scalar_t> w_hh_b(/*trans_b=*/false, plan.N, H, H, w_hh, H,
                                 plan.T() >= kPackFromSteps);
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    for_each_unit<scalar_t>(bs, H, [&](int64_t n, int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const int64_t k = (row + n) * H + j;
      V grad_h = L::load(dh + n * H + j);
      if (grad_out) grad_h = grad_h + L::load(grad_out + k);
      L::store(da + k, gates::rnn_backward(grad_h, L::load(out + k), act));
    });
    w_hh_b.multiply(bs, da + row * H, H, 0, dh, H);  // dh_prev = da w_hh
  }
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const optional<Tensor>& batch_sizes,
                                       const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                       const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                                       const std::string& nonlinearity, bool reverse) {
  checks::floating(input, false, kOp);
  const gates::Activation act = parse_activation(nonlinearity, kOp);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LayerShape d = layer_shape(kOp, 1, input, plan, h0, w_ih, w_hh, b_ih, b_hh, c10::nullopt);
  const Tensor x = input.contiguous();
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = d.H;
  Tensor output = large_buffer(out_sizes, input.options());
  Tensor h_n = h0.contiguous().clone();
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : Tensor();
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_rnn_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    forward_kernel<scalar_t>(d, plan, act, ptr(x), ptr(wi), ptr(wh), ptr(bi), ptr(bh),
                             ptr(output), ptr(h_n));
  });
  return {output, h_n};
}

// Returns grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias (the same for b_ih and b_hh).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const std::string& nonlinearity, bool reverse) {
  constexpr const char* op = "rnnkit::rnn_backward";
  checks::floating(input, false, op);
  const gates::Activation act = parse_activation(nonlinearity, op);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LayerShape d =
      layer_shape(op, 1, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, c10::nullopt);
  saved_shapes(op, input, output, d.H, nullptr, plan.P, 0);
  grad_shapes(op, grad_output, output, grad_h_n, h0);

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor out2d = output.contiguous().view({plan.P, d.H});
  const Tensor h_prev = previous_states(out2d, h0.contiguous(), plan);
  const Tensor gout = grad_output.has_value() ? grad_output->contiguous() : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor da = large_buffer({plan.P, d.H}, input.options());
  const Tensor wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_rnn_backward_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_kernel<scalar_t>(d, plan, act, ptr(gout), ptr(wh), ptr(out2d), ptr(da), ptr(dh));
  });
  const WeightGrads g = weight_grads(da, da, x, h_prev, w_ih, input.sizes());
  return {g.input, dh, g.w_ih, g.w_hh, g.b_ih};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  cells::register_rnn<&rnn_forward, &rnn_backward>(m);
}

}  // namespace cpu
}  // namespace rnnkit

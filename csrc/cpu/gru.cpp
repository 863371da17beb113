// GRU on the CPU: the whole-sequence forward and backward of one layer and direction, and the
// cell step built on them (common/cells.h). Same plan as lstm.cpp, except that the recurrent
// product of a step goes to its own buffer: the reset gate scales the recurrent part of the n
// gate only (n = tanh(x_n + r ⊙ (W_hn h + b_hn))), so the two parts cannot be summed first.
//
// Workspace saved for backward, per packed row: [r, z, n | h_n] where r, z, n are the activated
// gates (3H) and h_n = W_hn h_prev + b_hn the recurrent part of the n gate (H): 4H values per row.
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

constexpr const char* kOp = "rnnkit::gru";

// Forward over the whole sequence. With train, ws is the workspace [P, 4H] that backward reads;
// without, ws is scratch for the input projection of one chunk of steps (ProjectionChunks).
template <typename scalar_t>
void forward_kernel(const LayerShape& d, const SequencePlan& plan, bool train,
                    const scalar_t* x,     // [P, I]
                    const scalar_t* w_ih,  // [3H, I]
                    const scalar_t* w_hh,  // [3H, H]
                    const scalar_t* b_ih,  // [3H] or null
                    const scalar_t* b_hh,  // [3H] or null
                    scalar_t* out,         // [P, H]
                    scalar_t* h,           // [N, H]: h0 in, h_n out
                    scalar_t* ws,          // train: [P, 4H]; else [chunk rows, 3H]
                    scalar_t* gh) {        // [N, 3H] scratch: the recurrent product of a step
  const int64_t H = d.H, G = d.G, W = train ? 4 * H : G;
  const std::vector<scalar_t> bx_vec = bias_sum(G, b_ih, static_cast<const scalar_t*>(nullptr));
  const scalar_t* bx = bx_vec.data();  // [3H]: b_ih, or zeros

  const RecurrentStep<scalar_t> rec(w_hh, 3, H, H, plan.N, plan.T());
  // One step: gates [bs, W] holds its input projection on entry; the recurrent product goes to
  // gh, since the candidate gate needs its own part of it apart.
  const auto acc_of = [&](const StepState<scalar_t>&) { return gh; };
  const auto pointwise = [&](const StepState<scalar_t>& st, int64_t n, int64_t j, auto lanes) {
    using L = decltype(lanes);
    using V = typename L::V;
    scalar_t* g = st.gates + n * W;
    const scalar_t* r_h = gh + n * G;
    V h_r = L::load(r_h + j), h_z = L::load(r_h + H + j), h_n = L::load(r_h + 2 * H + j);
    if (b_hh) {
      h_r = h_r + L::load(b_hh + j);
      h_z = h_z + L::load(b_hh + H + j);
      h_n = h_n + L::load(b_hh + 2 * H + j);
    }
    const auto r = gates::gru_forward(
        L::load(g + j) + L::load(bx + j), L::load(g + H + j) + L::load(bx + H + j),
        L::load(g + 2 * H + j) + L::load(bx + 2 * H + j), h_r, h_z, h_n,
        L::load(st.h_prev + n * H + j));
    if (train) {
      L::store(g + j, r.r);
      L::store(g + H + j, r.z);
      L::store(g + 2 * H + j, r.n);
      L::store(g + 3 * H + j, h_n);
    }
    L::store(out + (st.row + n) * H + j, r.h);
    L::store(st.h_next + n * H + j, r.h);
  };
  forward_steps<scalar_t>(plan, train, x, d.I, w_ih, G, ws, W, rec, h, H, acc_of, G, false,
                          pointwise, nullptr);
}

template <typename scalar_t>
void backward_kernel(const LayerShape& d, const SequencePlan& plan,
                     const scalar_t* grad_out,  // [P, H] or null
                     const scalar_t* w_hh,      // [3H, H]
                     const scalar_t* ws,        // [P, 4H] from forward
                     const scalar_t* h_prev,    // [P, H]
                     scalar_t* dx,              // [P, 3H] out: gradients of the input side
                     scalar_t* dhh,             // [P, 3H] out: gradients of the recurrent side
                     scalar_t* dh) {            // [N, H]: grad_h_n in, grad_h0 out
  const int64_t H = d.H, G = d.G, W = 4 * H;
  const PackedB<scalar_t> w_hh_b(/*trans_b=*/false, plan.N, H, G, w_hh, H,
                                 plan.T() >= kPackFromSteps);
  for (int64_t s = 0; s < plan.T(); ++s) {
    const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
    const scalar_t* gout_t = grad_out ? grad_out + row * H : nullptr;
    for_each_unit<scalar_t>(bs, H, [&](int64_t n, int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const scalar_t* g = ws + (row + n) * W;
      V grad_h = L::load(dh + n * H + j);
      if (gout_t) grad_h = grad_h + L::load(gout_t + n * H + j);
      const auto r = gates::gru_backward(grad_h, L::load(g + j), L::load(g + H + j),
                                         L::load(g + 2 * H + j), L::load(g + 3 * H + j),
                                         L::load(h_prev + (row + n) * H + j));
      scalar_t* gx = dx + (row + n) * G;
      scalar_t* gh = dhh + (row + n) * G;
      L::store(gx + j, r.dx_r);
      L::store(gx + H + j, r.dx_z);
      L::store(gx + 2 * H + j, r.dx_n);
      L::store(gh + j, r.dx_r);
      L::store(gh + H + j, r.dx_z);
      L::store(gh + 2 * H + j, r.dh_n);
      L::store(dh + n * H + j, r.dh_prev_direct);
    });
    // dh_prev = z ⊙ dh (stored above) + dhh_t @ w_hh
    w_hh_b.multiply(bs, dhh + row * G, G, 1, dh, H);
  }
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input,
                                               const optional<Tensor>& batch_sizes,
                                               const Tensor& h0, const Tensor& w_ih,
                                               const Tensor& w_hh, const optional<Tensor>& b_ih,
                                               const optional<Tensor>& b_hh, bool reverse,
                                               bool train) {
  checks::floating(input, false, kOp);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LayerShape d = layer_shape(kOp, 3, input, plan, h0, w_ih, w_hh, b_ih, b_hh, c10::nullopt);
  const Tensor x = input.contiguous();
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = d.H;
  Tensor output = large_buffer(out_sizes, input.options());
  Tensor h_n = h0.contiguous().clone();
  const ProjectionChunks chunks(plan, train, d.G * input.element_size());
  Tensor ws = train ? large_buffer({plan.P, 4 * d.H}, input.options())
                    : at::empty({chunks.max_rows(), d.G}, input.options());
  Tensor gh = at::empty({plan.N, d.G}, input.options());
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : Tensor();
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_gru_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    forward_kernel<scalar_t>(d, plan, train, ptr(x), ptr(wi), ptr(wh), ptr(bi), ptr(bh),
                             ptr(output), ptr(h_n), ptr(ws), ptr(gh));
  });
  return {output, h_n, train ? ws : at::empty({0}, input.options())};
}

// Returns grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const Tensor& workspace, bool reverse) {
  constexpr const char* op = "rnnkit::gru_backward";
  checks::floating(input, false, op);
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LayerShape d =
      layer_shape(op, 3, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, c10::nullopt);
  saved_shapes(op, input, output, d.H, &workspace, plan.P, 4 * d.H);
  grad_shapes(op, grad_output, output, grad_h_n, h0);

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor h_prev = previous_states(output.contiguous().view({plan.P, d.H}),
                                        h0.contiguous(), plan);
  const Tensor ws = workspace.contiguous();
  const Tensor gout = grad_output.has_value() ? grad_output->contiguous() : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor dx = large_buffer({plan.P, d.G}, input.options());
  Tensor dhh = large_buffer({plan.P, d.G}, input.options());
  const Tensor wh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnkit_gru_backward_cpu", [&] {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_kernel<scalar_t>(d, plan, ptr(gout), ptr(wh), ptr(ws), ptr(h_prev), ptr(dx),
                              ptr(dhh), ptr(dh));
  });
  const WeightGrads g = weight_grads(dx, dhh, x, h_prev, w_ih, input.sizes());
  return {g.input, dh, g.w_ih, g.w_hh, g.b_ih, g.b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  cells::register_gru<&gru_forward, &gru_backward>(m);
}

}  // namespace cpu
}  // namespace rnnkit

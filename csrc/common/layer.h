// The operator prologue and epilogue of one layer, written once for every cell and both backends.
//
// layer_forward and layer_backward check the arguments, read the plan, make the outputs and
// their views, and hand a ForwardCall or BackwardCall (named fields) to the backend's time loop;
// layer_backward ends with the weight gradients (weight_grads.h). A backend is a struct with
//   kHalfTypes                 whether it computes in float16 and bfloat16
//   compute_dtype(dtype)       the dtype of the workspace and of the gradients through time for
//                              input of that dtype (CPU: float32 for float16 and bfloat16)
//   Guard                      constructed from the input's device for the whole call
//   check_device(input, op)    the input is on this backend's device
//   buffer(sizes, options)     a large buffer the kernel fills at once (outputs, workspaces)
//   forward<Cell>(call)        the forward time loop; returns the workspace [P, W] (training),
//                              or anything (inference, or a cell that saves none)
//   backward<Cell>(call)       backward through time: fills call.da, da_rec, dh, dc, dr
//   replay_zoneout(prev, cand, init, mask, p, plan)
//                              zoneout::replay over every unit: the mixed states [P, F] each
//                              step read, from the candidates cand [P, F] (a column slice);
//                              prev, cand and init in the compute dtype, mask in the input's
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "cell.h"
#include "checks.h"
#include "plan.h"
#include "shapes.h"
#include "weight_grads.h"
#include "zoneout.h"

namespace rnnkit {

using at::Tensor;
using c10::optional;

// The raw pointer of a tensor, or null for an undefined one (absent bias, no projection).
template <typename scalar_t>
scalar_t* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// The operator namespace of a cell: rnnkit, unless its description names another (kLibrary).
template <typename Cell>
constexpr const char* library_of() {
  if constexpr (requires { Cell::kLibrary; }) {
    return Cell::kLibrary;
  } else {
    return "rnnkit";
  }
}

// "rnnkit::lstm" or "rnnkit::lstm_backward": the name every error message starts with.
template <typename Cell>
const char* op_name(bool backward) {
  static const std::string forward = std::string(library_of<Cell>()) + "::" + Cell::kName;
  static const std::string backward_name = forward + "_backward";
  return backward ? backward_name.c_str() : forward.c_str();
}

// ---- zoneout (zoneout.h) --------------------------------------------------------------------
// The zoneout arguments of a layer operator and its backward, for h and (cell state) c: a mask
// [T, N, F] of the dtype and device of input (training), or else a probability in [0, 1) to mix
// with its expectation (evaluation); neither (no mask, p = 0): no zoneout.
struct ZoneoutArgs {
  optional<Tensor> mask_h, mask_c;
  double p_h = 0, p_c = 0;
};

// The checked zoneout of a call; masks contiguous, undefined where absent.
struct ZoneoutCall {
  Tensor mask_h, mask_c;  // [T, N, R], [T, N, H]
  double p_h = 0, p_c = 0;
  bool h() const { return mask_h.defined() || p_h != 0; }
  bool c() const { return mask_c.defined() || p_c != 0; }
  bool on() const { return h() || c(); }
};

// The zoneout arguments (ZoneoutArgs) in an operator's schema, last, with defaults that switch it
// off: h's, and c's for an operator that can take a cell state.
inline std::string zoneout_schema(bool cell_state) {
  std::string s = ", Tensor? zoneout_h=None, float zoneout_h_p=0.0";
  if (cell_state) s += ", Tensor? zoneout_c=None, float zoneout_c_p=0.0";
  return s;
}

inline Tensor checked_mask(const optional<Tensor>& mask, double p, const Tensor& input,
                           at::IntArrayRef shape, const char* op, const char* name,
                           const char* p_name) {
  TORCH_CHECK(p >= 0 && p < 1, op, ": expected ", p_name, " in [0, 1), got ", p);
  if (!mask.has_value()) return Tensor();
  TORCH_CHECK(p == 0, op, ": expected either ", name, " (training) or ", p_name,
              " (evaluation), got both (", p_name, " = ", p, ")");
  checks::shape(*mask, shape, op, name);
  checks::like(*mask, input, op, name);
  return mask->contiguous();
}

template <typename Cell>
ZoneoutCall checked_zoneout(const ZoneoutArgs& z, const Tensor& input, const SequencePlan& plan,
                            const LayerShape& d, const char* op) {
  ZoneoutCall c;
  c.mask_h = checked_mask(z.mask_h, z.p_h, input, {plan.T(), plan.N, d.R}, op,
                          "zoneout_h (T, N, R)", "zoneout_h_p");
  c.p_h = z.p_h;
  if constexpr (Cell::kCellState) {
    c.mask_c = checked_mask(z.mask_c, z.p_c, input, {plan.T(), plan.N, d.H}, op,
                            "zoneout_c (T, N, H)", "zoneout_c_p");
    c.p_c = z.p_c;
  }
  return c;
}

// One step's zoneout as the pointwise code reads it (zoneout::Step): the rows of time index t.
// h_by_loop: the time loop mixes h itself (after a projection), so the unit code leaves it.
template <typename scalar_t, typename compute_t = scalar_t>
zoneout::Step<scalar_t, compute_t> step_zoneout(const ZoneoutCall& z, int64_t t, int64_t N,
                                                int64_t R, int64_t H, bool h_by_loop) {
  const auto state = [&](const Tensor& mask, double p, int64_t F, bool on) {
    zoneout::State<scalar_t> s;
    s.F = F;
    if (!on) return s;
    if (mask.defined()) s.mask = ptr<scalar_t>(mask) + t * N * F;
    s.p = static_cast<at::opmath_type<scalar_t>>(mask.defined() ? 0.0 : p);
    return s;
  };
  zoneout::Step<scalar_t, compute_t> step;
  step.h = state(z.mask_h, z.p_h, R, z.h() && !h_by_loop);
  step.c = state(z.mask_c, z.p_c, H, z.c());
  return step;
}

// The masks of a zoned-out state in the packed row order, [P, F] (row r: the mask of the unit
// that row r's step mixed), or the probability as a 0-D tensor without a mask.
inline Tensor packed_mask(const Tensor& mask, double p, const SequencePlan& plan,
                          const Tensor& like) {
  if (!mask.defined()) return at::scalar_tensor(p, like.options());
  const int64_t F = mask.size(2);
  if (plan.T() == 0 || plan.batch_sizes.front() == plan.batch_sizes.back())
    return mask.view({plan.P, F});
  Tensor rows = at::empty({plan.P, F}, mask.options());
  for (int64_t t = 0; t < plan.T(); ++t)
    rows.narrow(0, plan.offsets[t], plan.batch_sizes[t])
        .copy_(mask[t].narrow(0, 0, plan.batch_sizes[t]));
  return rows;
}

// ---- forward --------------------------------------------------------------------------------
// A layer's arguments as the operators take them (the shapes of rnnkit.cpp's schemas).
struct LayerArgs {
  Tensor input;                    // [T, N, I], or [P, I] with batch_sizes
  optional<Tensor> batch_sizes;    // [T] int64, or none (padded input)
  Tensor h0;                       // [N, R]
  Tensor c0;                       // [N, H] (cells with a cell state; else undefined)
  Tensor w_ih, w_hh;               // [G, I], [G, R]
  optional<Tensor> b_ih, b_hh;     // [G] each
  optional<Tensor> w_hr;           // [R, H] (proj_size)
  bool reverse = false;
  bool train = true;
  const std::string* nonlinearity = nullptr;  // the Elman RNN's
  Tensor norm;                     // [Layout::norm_params()] (row-norm cells; else undefined)
  ZoneoutArgs zoneout;
};

// What the forward time loop reads and writes; tensors contiguous, undefined where absent.
struct ForwardCall {
  SequencePlan plan;
  LayerShape d;
  int64_t W = 0;  // workspace width, Cell::Layout{H, proj}.width()
  bool proj = false, train = true;
  gates::Activation act = gates::Activation::Tanh;
  Tensor x;                        // [P, I]
  Tensor w_ih, w_hh, b_ih, b_hh;   // [G, I], [G, R], [G], [G]
  Tensor w_hr;                     // [R, H]
  Tensor output;                   // [P, R]
  Tensor h0;                       // [N, R]: the initial state, read only
  Tensor h;                        // [N, R]: h0 in, h_n out
  Tensor c;                        // [N, H]: c0 in, c_n out (cell state)
  Tensor norm;                     // [Layout::norm_params()] (row-norm cells)
  ZoneoutCall zoneout;
  Tensor prev_c;                   // [N, H] scratch, row-norm cells with zoneout on c
                                   // (zoneout::Step::prev_c)
};

struct LayerResult {
  Tensor output, h_n, c_n, workspace;  // workspace: [P, W] in training, [0] without
};

// The checks every operator makes first: the input's device and dtype, then the nonlinearity.
template <typename Backend>
gates::Activation first_checks(const Tensor& input, const std::string* nonlinearity,
                               const char* op) {
  Backend::check_device(input, op);
  checks::floating(input, Backend::kHalfTypes, op);
  return nonlinearity ? parse_activation(*nonlinearity, op) : gates::Activation::Tanh;
}

// The norm parameters of a row-norm cell, checked: [Layout::norm_params()], like the input;
// returned in the backend's compute dtype (float32 for bfloat16 and float16 on the CPU), which
// the row passes read them in.
template <typename Cell>
Tensor norm_argument(const Tensor& norm, const Tensor& input, int64_t H, at::ScalarType compute,
                     const char* op) {
  checks::shape(norm, {typename Cell::Layout{H, false}.norm_params()}, op,
                "norm (the norm parameters)");
  checks::like(norm, input, op, "norm");
  return norm.contiguous().to(compute);
}

template <typename Cell, typename Backend>
LayerResult layer_forward(const LayerArgs& a) {
  const char* op = op_name<Cell>(false);
  ForwardCall call;
  call.act = first_checks<Backend>(a.input, a.nonlinearity, op);
  const typename Backend::Guard guard(a.input.device());
  call.plan = make_plan(a.input, a.batch_sizes, a.reverse, op);
  call.d = layer_shape(op, Cell::kGates, a.input, call.plan, a.h0, a.w_ih, a.w_hh, a.b_ih,
                       a.b_hh, a.w_hr);
  const int64_t N = call.plan.N, H = call.d.H;
  if constexpr (Cell::kCellState) {
    checks::shape(a.c0, {N, H}, op, "c0 (N, H)");
    checks::like(a.c0, a.input, op, "c0");
  }
  call.proj = a.w_hr.has_value();
  call.train = a.train;
  call.zoneout = checked_zoneout<Cell>(a.zoneout, a.input, call.plan, call.d, op);
  call.W = typename Cell::Layout{H, call.proj}.width();
  if constexpr (row_norm<Cell>()) {
    const at::ScalarType compute = Backend::compute_dtype(a.input.scalar_type());
    call.norm = norm_argument<Cell>(a.norm, a.input, H, compute, op);
    if (call.zoneout.c()) call.prev_c = at::empty({N, H}, a.input.options().dtype(compute));
  }
  const auto contiguous = [](const optional<Tensor>& t) {
    return t.has_value() ? t->contiguous() : Tensor();
  };
  call.x = a.input.contiguous().view({call.plan.P, call.d.I});
  call.w_ih = a.w_ih.contiguous();
  call.w_hh = a.w_hh.contiguous();
  call.b_ih = contiguous(a.b_ih);
  call.b_hh = contiguous(a.b_hh);
  call.w_hr = contiguous(a.w_hr);
  auto out_sizes = a.input.sizes().vec();
  out_sizes.back() = call.d.R;
  LayerResult r;
  r.output = Backend::buffer(out_sizes, a.input.options());
  call.output = r.output.view({call.plan.P, call.d.R});
  call.h0 = a.h0.contiguous();
  call.h = r.h_n = call.h0.clone();
  if constexpr (Cell::kCellState) call.c = r.c_n = a.c0.contiguous().clone();
  const Tensor ws = Backend::template forward<Cell>(call);
  r.workspace = a.train ? ws
                        : at::empty({0}, a.input.options().dtype(
                                             Backend::compute_dtype(a.input.scalar_type())));
  return r;
}

// ---- backward -------------------------------------------------------------------------------
// A layer backward's arguments as the operators take them.
struct LayerGradArgs {
  optional<Tensor> grad_output;   // [T, N, R] or [P, R]
  optional<Tensor> grad_h_n;      // [N, R]
  optional<Tensor> grad_c_n;      // [N, H] (cell state)
  Tensor input;                   // as in LayerArgs
  optional<Tensor> batch_sizes;
  Tensor h0, c0, w_ih, w_hh;
  optional<Tensor> w_hr;
  Tensor output;                  // the forward's output
  Tensor workspace;               // the forward's workspace [P, W] (undefined: the cell saves none)
  bool reverse = false;
  const std::string* nonlinearity = nullptr;
  Tensor norm;                    // as in LayerArgs
  ZoneoutArgs zoneout;            // as the forward took it
};

// What backward through time reads and writes; tensors contiguous, undefined where absent.
struct BackwardCall {
  SequencePlan plan;
  LayerShape d;
  int64_t W = 0;
  bool proj = false;
  gates::Activation act = gates::Activation::Tanh;
  Tensor output;        // [P, R]
  Tensor ws;            // [P, W]
  Tensor h_prev;        // [P, R]: the state each row's step read
  Tensor c_prev;        // [P, H]: the cell state each row's step read (cell state)
  Tensor grad_output;   // [P, R]
  Tensor w_hh, w_hr;    // [G, R], [R, H]
  Tensor dh;            // [N, R]: grad_h_n in, grad_h0 out
  Tensor dc;            // [N, H]: grad_c_n in, grad_c0 out (cell state)
  Tensor da;            // [P, G] out: gradients of the input-side pre-activations
  Tensor da_rec;        // [P, G] out: of the recurrent-side ones (the same tensor as da unless
                        // Cell::kRecurrentApart)
  Tensor dr;            // [P, R] out with a projection: dL/d(output)
  Tensor dh_pre;        // [N, H] scratch with a projection
  Tensor norm;          // [Layout::norm_params()] (row-norm cells)
  Tensor dp;            // [P, Wn] out (row-norm cells): StepBackward::dp of every row
  ZoneoutCall zoneout;
  Tensor carry_h;       // [N, R] scratch with zoneout on h: the part of dh carried past a step
  Tensor carry_c;       // [N, H] scratch, row-norm cells with zoneout on c (zoneout::Step)
};

// The buffers of a backward call as a step's pointwise code reads them, at packed row 0
// (StepBackward::at_row moves it to a step).
template <typename scalar_t, typename compute_t = scalar_t>
StepBackward<scalar_t, compute_t> step_backward(const BackwardCall& call) {
  return {ptr<compute_t>(call.ws),     ptr<scalar_t>(call.output), ptr<scalar_t>(call.h_prev),
          ptr<compute_t>(call.c_prev), ptr<compute_t>(call.grad_output),
          ptr<compute_t>(call.dh),     ptr<compute_t>(call.dc),    ptr<compute_t>(call.da),
          ptr<compute_t>(call.da_rec), call.d.H,                   call.W,
          call.act,                    ptr<compute_t>(call.norm),  ptr<compute_t>(call.dp),
          call.dp.defined() ? call.dp.size(1) : 0};
}

struct LayerGrads {
  WeightGrads g;     // input, w_ih, w_hh, b_ih, b_hh
  Tensor h0, c0;     // [N, R], [N, H] (cell state)
  Tensor w_hr;       // [R, H], or [0] without a projection
  Tensor norm;       // [Layout::norm_params()] (row-norm cells)
};

// A row-norm cell's biases and norm parameters, from dp [P, Wn] (the gradients of its normalised
// values after their gains and shifts; overwritten) and the normalised values the workspace
// saved: each gain's gradient is sum(dp ⊙ value), each shift's sum(dp). The first two blocks'
// shifts are b_ih and b_hh; the norm parameters are [every gain | the shifts of the blocks after
// those two]. dp and ws are in the compute dtype; the sums are rounded to dtype (the input's) once.
template <typename Layout>
void norm_grads(Tensor& dp, const Tensor& ws, const Layout& layout, int64_t G,
                at::ScalarType dtype, LayerGrads& r) {
  const int64_t Wn = layout.norm_width();
  const Tensor shifts = dp.sum(0);
  // In place: dp is scratch, and a product the size of the workspace would be a fresh buffer.
  const Tensor gains = dp.mul_(ws.narrow(1, layout.norm_values(), Wn)).sum(0);
  r.g.b_ih = shifts.narrow(0, 0, G).to(dtype);
  r.g.b_hh = shifts.narrow(0, G, G).to(dtype);
  r.norm = at::cat({gains, shifts.narrow(0, 2 * G, Wn - 2 * G)}).to(dtype);
}

template <typename Cell, typename Backend>
LayerGrads layer_backward(const LayerGradArgs& a) {
  const char* op = op_name<Cell>(true);
  BackwardCall call;
  call.act = first_checks<Backend>(a.input, a.nonlinearity, op);
  const typename Backend::Guard guard(a.input.device());
  const SequencePlan& plan = call.plan = make_plan(a.input, a.batch_sizes, a.reverse, op);
  const LayerShape& d = call.d = layer_shape(op, Cell::kGates, a.input, plan, a.h0, a.w_ih,
                                             a.w_hh, c10::nullopt, c10::nullopt, a.w_hr);
  call.proj = a.w_hr.has_value();
  call.zoneout = checked_zoneout<Cell>(a.zoneout, a.input, plan, d, op);
  const typename Cell::Layout layout{d.H, call.proj};
  call.W = layout.width();
  if constexpr (Cell::kCellState) {
    checks::shape(a.c0, {plan.N, d.H}, op, "c0 (N, H)");
    checks::like(a.c0, a.input, op, "c0");
  }
  // The workspace, the gradients through time and the cell state within the call are in the
  // backend's compute dtype (float32 for a bfloat16 input on the CPU); the results are rounded
  // to the input's dtype at the end.
  const at::ScalarType dtype = a.input.scalar_type(), compute = Backend::compute_dtype(dtype);
  const auto widened = [compute](const Tensor& t) {
    return t.scalar_type() == compute ? t.clone() : t.to(compute);
  };
  // Large per-call tensors go to the backend's buffers (on the CPU, blocks whose pages are
  // already mapped: fresh ones cost the LSTM's backward about 4,500 page faults a call).
  const auto in_compute = [compute](const Tensor& t) {
    if (t.scalar_type() == compute) return t;
    Tensor b = Backend::buffer(t.sizes(), t.options().dtype(compute));
    b.copy_(t);
    return b;
  };
  saved_shapes(op, a.input, a.output, d.R, Cell::kGatesInOutput ? nullptr : &a.workspace, plan.P,
               call.W, compute);
  grad_shapes(op, a.grad_output, a.output, a.grad_h_n, a.h0);
  if constexpr (Cell::kCellState) {
    if (a.grad_c_n.has_value()) {
      checks::shape(*a.grad_c_n, a.c0.sizes(), op, "grad_c_n");
      checks::like(*a.grad_c_n, a.input, op, "grad_c_n");
    }
  }

  const auto options = a.input.options();
  const auto coptions = options.dtype(compute);
  const Tensor x = a.input.contiguous().view({plan.P, d.I});
  call.output = a.output.contiguous().view({plan.P, d.R});
  if constexpr (!Cell::kGatesInOutput) call.ws = a.workspace.contiguous();
  call.h_prev = previous_states(call.output, a.h0.contiguous(), plan,
                                Backend::buffer({plan.P, d.R}, options));
  if constexpr (Cell::kGatesInOutput) {
    // The cell's backward reads its new state, the candidate, from the output, which holds the
    // mixed state; where m = 1 the candidate's gradient is zero and any finite value serves.
    // Recovered in the compute dtype (with p itself, not p rounded), then rounded to the output's.
    if (call.zoneout.h()) {
      const Tensor out = call.output.to(compute), prev = call.h_prev.to(compute);
      const Tensor m = packed_mask(call.zoneout.mask_h, call.zoneout.p_h, plan, out);
      call.output = at::where(m == 1, out, (out - m * prev) / (1 - m)).to(dtype);
    }
  }
  if constexpr (Cell::kCellState) {
    const Tensor cand = call.ws.narrow(1, layout.c(), d.H);  // the workspace saves c~
    const Tensor c0 = a.c0.contiguous().to(compute);
    if (call.zoneout.c()) {
      // The mixed c each step read, replayed from the candidates (zoneout::replay).
      call.c_prev = Backend::buffer({plan.P, d.H}, coptions);
      Backend::replay_zoneout(call.c_prev, cand, c0, call.zoneout.mask_c, call.zoneout.p_c, plan);
    } else {
      call.c_prev = previous_states(cand, c0, plan, Backend::buffer({plan.P, d.H}, coptions));
    }
    call.dc = a.grad_c_n.has_value() ? widened(a.grad_c_n->contiguous())
                                     : at::zeros(a.c0.sizes(), coptions);
  }
  if (a.grad_output.has_value())
    call.grad_output = in_compute(a.grad_output->contiguous().view({plan.P, d.R}));
  call.dh = a.grad_h_n.has_value() ? widened(a.grad_h_n->contiguous())
                                   : at::zeros(a.h0.sizes(), coptions);
  call.da = Backend::buffer({plan.P, d.G}, coptions);
  call.da_rec = Cell::kRecurrentApart ? Backend::buffer({plan.P, d.G}, coptions) : call.da;
  if (call.zoneout.h()) call.carry_h = at::empty({plan.N, d.R}, coptions);
  if (call.proj) {
    call.dr = Backend::buffer({plan.P, d.R}, coptions);
    call.dh_pre = at::empty({plan.N, d.H}, coptions);
  }
  call.w_hh = a.w_hh.contiguous();
  if (call.proj) call.w_hr = a.w_hr->contiguous();
  if constexpr (row_norm<Cell>()) {
    call.norm = norm_argument<Cell>(a.norm, a.input, d.H, compute, op);
    call.dp = Backend::buffer({plan.P, layout.norm_width()}, coptions);
    if (call.zoneout.c()) call.carry_c = at::empty({plan.N, d.H}, coptions);
  }
  const GateGrads rounded = Backend::template backward<Cell>(call);

  LayerGrads r;
  r.g = weight_grads<Backend>(call.da, call.da_rec, shared_gates<Cell>() * d.H, x, call.h_prev,
                              a.w_ih, a.input.sizes(), /*biases=*/!row_norm<Cell>(), rounded);
  r.h0 = call.dh.to(dtype);
  r.c0 = call.dc.defined() ? call.dc.to(dtype) : call.dc;
  r.w_hr = at::empty({0}, options);
  if constexpr (Cell::kProjection) {
    if (call.proj)
      r.w_hr = at::mm(call.dr.t(), call.ws.narrow(1, layout.h_pre(), d.H)).to(dtype);
  }
  if constexpr (row_norm<Cell>()) norm_grads(call.dp, call.ws, layout, d.G, dtype, r);
  return r;
}

}  // namespace rnnkit

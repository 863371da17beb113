// What a cell is to the time loops: a description (a struct in common/cells/) and the two views of
// one time step its pointwise code reads and writes (StepForward, StepBackward, below).
//
// A cell description is a struct with
//   kName             the operator name ("lstm": rnnkit::lstm, lstm_backward, lstm_cell, ...)
//   kGates            gates per hidden unit: G = kGates * H gate rows
//   kCellState        true: the cell carries a cell state c beside h (the LSTM)
//   kProjection       true: the cell takes proj_size (h projected to R features by w_hr)
//   kRecurrentApart   true: the recurrent product h_prev W_hh^T goes to its own buffer instead of
//                     onto the gates' input projection, because a gate scales part of it (GRU)
//   kGatesInOutput    true: the cell saves no workspace; its pre-activations accumulate in the
//                     output rows and backward reads h alone (Elman RNN)
//   kDirectGrad       true: the backward pointwise writes a part of dh_prev that does not pass
//                     through W_hh (GRU's z ⊙ dh), and the backward product adds onto it
//   kRowNorm          (optional, false if absent) true: the cell layer-normalises whole rows; it
//                     writes forward_row and backward_row (common/row_norm.h) instead of the
//                     per-unit forward and backward, takes its norm parameters in io.norm, and
//                     its Layout names the normalised values it saves: norm_values() (offset),
//                     norm_width() (Wn) and norm_params() (the length of io.norm)
//   Layout            the workspace row, its blocks by name: Layout{H, proj}.width() and one
//                     offset per saved block (the Python fakes read width() through rnnkit._C)
//   forward<L>(io, n, j), backward<L>(io, n, j)
//                     the pointwise pass of unit j of active row n, on lanes L (L::V the value
//                     type, L::load and L::store the memory access: a SIMD register on the CPU,
//                     one opmath value per thread on CUDA)
// The time loops (cpu/time_loop.h, cuda/time_loop.cuh) and the operator code
// (common/operators.h) read nothing else of a cell. Shapes use the letters of gates.h.
#pragma once

#include <cstdint>

#include "gates.h"

namespace rnnkit {

// The pointers of one forward step, rows of the step's active batch only (n < bs). scalar_t is
// the storage type of the input, the states fed to the products and the output; compute_t that
// of the gates, the workspace and the cell state (float for float16 and bfloat16 on the CPU;
// the same as scalar_t elsewhere).
template <typename scalar_t, typename compute_t = scalar_t>
struct StepForward {
  compute_t* gates;          // [bs, ld_gates]: the input projection in (plus the recurrent product
                            // unless kRecurrentApart); the workspace row out when save
  int64_t ld_gates;         // row stride of gates (the workspace width when save)
  const compute_t* rec;     // [bs, G]: the recurrent product, with kRecurrentApart; else null
  const compute_t* bias;    // [G] or null: added to the input side (b_ih + b_hh, or b_ih alone
                            // with kRecurrentApart); null where the projection holds it
  const compute_t* rec_bias; // [G] or null: b_hh, added to the recurrent side (kRecurrentApart)
  const scalar_t* h_prev;   // [bs, R]: the state the step starts from
  scalar_t* h_next;         // [bs, R]: the new state (not written with a projection)
  scalar_t* out;            // [bs, R]: the step's output rows (not written with a projection)
  compute_t* c;             // [bs, H]: the cell state, c_prev in and c out (kCellState)
  compute_t* h_pre;         // [bs, ld_h_pre] or null: h before the projection (projection only)
  int64_t ld_h_pre;
  int64_t H, R;
  bool save;                // write the workspace row (training)
  gates::Activation act;    // the Elman RNN's nonlinearity
  const compute_t* norm;    // [Layout::norm_params()]: the norm parameters (kRowNorm); else null

  // The input-side pre-activation of gate k of unit (n, j), with its bias.
  template <typename L>
  RNNKIT_HD typename L::V input_side(int64_t n, int64_t k, int64_t j) const {
    const auto a = L::load(gates + n * ld_gates + k * H + j);
    return bias ? a + L::load(bias + k * H + j) : a;
  }
  // The recurrent-side pre-activation of gate k of unit (n, j), with its bias (kRecurrentApart).
  template <typename L>
  RNNKIT_HD typename L::V recurrent_side(int64_t n, int64_t k, int64_t j, int64_t G) const {
    const auto a = L::load(rec + n * G + k * H + j);
    return rec_bias ? a + L::load(rec_bias + k * H + j) : a;
  }
};

// The pointers of one backward step, rows of the step's active batch only (n < bs). Types as in
// StepForward: out and h_prev in the storage type, the rest in the compute type.
template <typename scalar_t, typename compute_t = scalar_t>
struct StepBackward {
  const compute_t* ws;      // [bs, W]: the step's workspace rows
  const scalar_t* out;      // [bs, R]: the step's output rows (h)
  const scalar_t* h_prev;   // [bs, R]: the state the step started from
  const compute_t* c_prev;  // [bs, H]: the cell state the step started from (kCellState)
  const compute_t* dh_out;  // [bs, H] or null: gradient reaching h from the output (grad_output
                            // rows, or dh_pre = dr w_hr with a projection)
  compute_t* dh;            // [bs, H] or null: gradient carried from the next step; kDirectGrad
                            // cells overwrite it with the direct part of dh_prev
  compute_t* dc;            // [bs, H]: gradient of c in, of c_prev out (kCellState)
  compute_t* da;            // [bs, G]: gradients of the input-side pre-activations
  compute_t* da_rec;        // [bs, G]: of the recurrent-side ones (kRecurrentApart); else da
  int64_t H, W;
  gates::Activation act;
  const compute_t* norm;    // [Layout::norm_params()] (kRowNorm); else null
  compute_t* dp;            // [bs, Wn] out (kRowNorm): the gradients of the normalised values
                            // after their gains and shifts, from which layer.h sums the gradients
                            // of the norm parameters and the biases; else null
  int64_t Wn;               // Layout::norm_width() (kRowNorm); else 0

  // This view moved to the step whose first packed row is `row` (dh and dc, [N, ...], stay).
  StepBackward at_row(int64_t row, int64_t R, int64_t G) const {
    const auto move = [row](auto* p, int64_t width) { return p ? p + row * width : p; };
    StepBackward s = *this;
    s.ws = move(ws, W);
    s.out = move(out, R);
    s.h_prev = move(h_prev, R);
    s.c_prev = move(c_prev, H);
    s.dh_out = move(dh_out, R);
    s.da = move(da, G);
    s.da_rec = move(da_rec, G);
    s.dp = move(dp, Wn);
    return s;
  }

  // The whole gradient reaching h of unit (n, j): dh_out + dh, either possibly absent.
  template <typename L>
  RNNKIT_HD typename L::V grad_h(int64_t n, int64_t j) const {
    using V = typename L::V;
    const int64_t k = n * H + j;
    if (dh_out && dh) return L::load(dh + k) + L::load(dh_out + k);
    if (dh) return L::load(dh + k);
    return dh_out ? L::load(dh_out + k) : V(0);
  }
};

// How many leading gates of a kRecurrentApart cell have the same gradient on the recurrent side
// as on the input side (da_rec equals da in those columns: its kSharedGates, none where it has
// none). The weight gradients round and sum those columns once (weight_grads.h).
template <typename Cell>
constexpr int64_t shared_gates() {
  if constexpr (requires { Cell::kSharedGates; }) {
    return Cell::kSharedGates;
  } else {
    return 0;
  }
}

// Whether a cell normalises rows (its kRowNorm, false where it has none).
template <typename Cell>
constexpr bool row_norm() {
  if constexpr (requires { Cell::kRowNorm; }) {
    return Cell::kRowNorm;
  } else {
    return false;
  }
}

}  // namespace rnnkit

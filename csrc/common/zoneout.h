// Zoneout (Krueger et al. 2016) of a layer's states, one general step of both time loops.
//
// After a cell's pointwise pass has computed the candidate new state s~_t (h, and c for cells
// with kCellState), the state the next step reads and the layer outputs is
//   s_t = m_t ⊙ s_{t-1} + (1 − m_t) ⊙ s~_t
// with m_t a mask of zeros and ones drawn per element and step (training), or the constant
// probability p (evaluation: the expectation of the mask). Backward through the mix:
//   ds_{t-1} += m_t ⊙ ds_t,   ds~_t = (1 − m_t) ⊙ ds_t.
// The time loops call zoneout::forward and zoneout::backward in place of the cell's own forward
// and backward for one unit, and zoneout::forward_row and backward_row in place of a row-norm
// cell's row passes (common/row_norm.h); with a projection (proj_size) h is mixed after the
// projection by the time loop (mix, split), since the cell writes h before the projection only.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cell.h"
#include "math.h"

namespace rnnkit {
namespace zoneout {

// m ⊙ prev + (1 − m) ⊙ cand. With m exactly 0 or 1 both products are exact, so the result is
// exactly one of the two states (no rounding), and the backward recomputation of the states
// (layer.h) reproduces the forward's values.
template <typename V>
RNNKIT_HD V mix(V m, V prev, V cand) {
  return m * prev + (V(1) - m) * cand;
}

// The gradient ds reaching a mixed state, split into the part carried to the previous state
// (m ⊙ ds) and the part reaching the candidate ((1 − m) ⊙ ds).
template <typename V>
struct Split {
  V carry, cand;
};
template <typename V>
RNNKIT_HD Split<V> split(V m, V ds) {
  return {m * ds, (V(1) - m) * ds};
}

// One state's zoneout in one step: the step's mask rows, or the evaluation probability.
template <typename scalar_t>
struct State {
  const scalar_t* mask = nullptr;  // [N, F]: the step's rows of the [T, N, F] mask, or null
  // Without a mask: the probability, 0 = no zoneout; in the compute type, so that a float16 or
  // bfloat16 layer mixes with p itself and not p rounded to its storage type.
  at::opmath_type<scalar_t> p = 0;
  int64_t F = 0;                   // the state's width (R for h, H for c)

  RNNKIT_HD bool on() const { return mask != nullptr || p != 0; }
  // m of unit (n, j).
  template <typename L>
  RNNKIT_HD typename L::V at(int64_t n, int64_t j) const {
    using V = typename L::V;
    return mask ? L::load(mask + n * F + j) : V(static_cast<V>(p));
  }
};

// Both states' zoneout in one step. h.on() is false when the time loop mixes h itself (after a
// projection). The masks are in the storage type scalar_t (the input's dtype); the gradients in
// the compute type (cell.h).
// A row-norm cell's rows keep what a unit's pass keeps in registers in two scratch rows of c.
template <typename scalar_t, typename compute_t = scalar_t>
struct Step {
  State<scalar_t> h, c;
  compute_t* carry_h = nullptr;  // backward: [N, R] scratch, m ⊙ dh, added after the product
  compute_t* prev_c = nullptr;   // forward, row-norm cells, zoneout on c: [N, H] scratch, c_prev
  compute_t* carry_c = nullptr;  // backward, row-norm cells, zoneout on c: [N, H] scratch, m ⊙ dc
};

// The cell's forward of unit (n, j), then the mix of its new states.
template <typename Cell, typename L, typename scalar_t, typename compute_t>
RNNKIT_HD void forward(const StepForward<scalar_t, compute_t>& io,
                       const Step<scalar_t, compute_t>& z, int64_t n, int64_t j) {
  using V = typename L::V;
  const bool zh = z.h.on() && !io.h_pre, zc = Cell::kCellState && z.c.on();
  const int64_t kh = n * io.R + j, kc = n * io.H + j;
  // The previous states, read before the cell overwrites them (c in place on both backends, and
  // h on CUDA, whose state buffer is updated in place).
  const V h_prev = zh ? L::load(io.h_prev + kh) : V(0);
  const V c_prev = zc ? L::load(io.c + kc) : V(0);
  Cell::template forward<L>(io, n, j);
  if (zc) L::store(io.c + kc, mix(z.c.template at<L>(n, j), c_prev, L::load(io.c + kc)));
  if (zh) {
    const V h = mix(z.h.template at<L>(n, j), h_prev, L::load(io.h_next + kh));
    L::store(io.h_next + kh, h);
    L::store(io.out + kh, h);
  }
}

// The cell's backward of unit (n, j) through the mix: the gradients reaching the states are
// split, the candidates' parts go through the cell, the carried parts to the previous states
// (c here; h through z.carry_h, which the time loop adds after the recurrent product writes dh).
// io.dh is never null here (the time loop passes it unless it projects, and then z.h is off).
template <typename Cell, typename L, typename scalar_t, typename compute_t>
RNNKIT_HD void backward(const StepBackward<scalar_t, compute_t>& io,
                        const Step<scalar_t, compute_t>& z, int64_t n, int64_t j) {
  using V = typename L::V;
  StepBackward<scalar_t, compute_t> cell_io = io;
  if (z.h.on()) {
    const int64_t k = n * io.H + j;
    const Split<V> s = split(z.h.template at<L>(n, j), io.template grad_h<L>(n, j));
    L::store(z.carry_h + k, s.carry);
    L::store(io.dh + k, s.cand);
    cell_io.dh_out = nullptr;  // folded into dh above
  }
  if (!(Cell::kCellState && z.c.on())) {
    Cell::template backward<L>(cell_io, n, j);
    return;
  }
  const int64_t k = n * io.H + j;
  const Split<V> s = split(z.c.template at<L>(n, j), L::load(io.dc + k));
  L::store(io.dc + k, s.cand);
  Cell::template backward<L>(cell_io, n, j);
  L::store(io.dc + k, L::load(io.dc + k) + s.carry);
}

// A row-norm cell's forward of row n (common/row_norm.h), then the mix of its new states. The
// cell normalises its candidate c~ over the whole row, so the mix follows the cell's whole pass:
// c_prev is copied to z.prev_c first (the cell overwrites c in place), and the cell writes h~ to
// the output row alone, which leaves h_prev for the mix (on CUDA h_prev is h_next, in place).
// With neither state zoned out it is the cell's pass and nothing more.
template <typename Cell, typename Ops, typename scalar_t, typename compute_t>
RNNKIT_HD void forward_row(const StepForward<scalar_t, compute_t>& io,
                           const Step<scalar_t, compute_t>& z, int64_t n, const Ops& ops) {
  const bool zh = z.h.on(), zc = Cell::kCellState && z.c.on();
  if (!zh && !zc) {
    Cell::template forward_row<Ops>(io, n, ops);
    return;
  }
  const int64_t H = io.H;  // = R: row-norm cells have no projection
  compute_t* c = io.c + n * H;
  if (zc) {
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      L::store(z.prev_c + n * H + j, L::load(c + j));
    });
  }
  StepForward<scalar_t, compute_t> cell_io = io;
  if (zh) cell_io.h_next = io.out;
  Cell::template forward_row<Ops>(cell_io, n, ops);
  ops.units(H, [&](int64_t j, auto lanes) {
    using L = decltype(lanes);
    const int64_t k = n * H + j;
    if (zc) L::store(c + j, mix(z.c.template at<L>(n, j), L::load(z.prev_c + k), L::load(c + j)));
    if (zh) {
      const auto h = mix(z.h.template at<L>(n, j), L::load(io.h_prev + k), L::load(io.out + k));
      L::store(io.out + k, h);
      L::store(io.h_next + k, h);
    }
  });
}

// A row-norm cell's backward of row n through the mix, as backward's: the candidates' parts of
// the gradients go through the cell's row pass, the carried parts wait in z.carry_h (added by the
// time loop after the recurrent product) and z.carry_c (added to dc_prev after the cell's pass).
template <typename Cell, typename Ops, typename scalar_t, typename compute_t>
RNNKIT_HD void backward_row(const StepBackward<scalar_t, compute_t>& io,
                            const Step<scalar_t, compute_t>& z, int64_t n, const Ops& ops) {
  const bool zh = z.h.on(), zc = Cell::kCellState && z.c.on();
  if (!zh && !zc) {
    Cell::template backward_row<Ops>(io, n, ops);
    return;
  }
  const int64_t H = io.H;
  ops.units(H, [&](int64_t j, auto lanes) {
    using L = decltype(lanes);
    const int64_t k = n * H + j;
    if (zh) {
      const auto s = split(z.h.template at<L>(n, j), io.template grad_h<L>(n, j));
      L::store(z.carry_h + k, s.carry);
      L::store(io.dh + k, s.cand);
    }
    if (zc) {
      const auto s = split(z.c.template at<L>(n, j), L::load(io.dc + k));
      L::store(z.carry_c + k, s.carry);
      L::store(io.dc + k, s.cand);
    }
  });
  StepBackward<scalar_t, compute_t> cell_io = io;
  if (zh) cell_io.dh_out = nullptr;  // folded into dh above
  Cell::template backward_row<Ops>(cell_io, n, ops);
  if (zc) {
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      const int64_t k = n * H + j;
      L::store(io.dc + k, L::load(io.dc + k) + L::load(z.carry_c + k));
    });
  }
}

// The mixed states every step started from, replayed for backward from the candidates the
// forward saved: for unit (n, j), over the steps in the forward's order, prev[row] = s, then
// s = mix(m, s, cand[row]) (row: the step's packed row of n, while n is active). The same
// arithmetic as forward's mix, so the values are the forward's. The states are in the compute
// type (the cell state's, cell.h), the mask in the storage type.
template <typename scalar_t, typename compute_t = scalar_t>
struct Replay {
  const compute_t* cand;        // [P, ld_cand]: the candidates (a column block of the workspace)
  int64_t ld_cand;
  const compute_t* init;        // [N, F]: the initial state
  const scalar_t* mask;         // [T, N, F], or null: p
  at::opmath_type<scalar_t> p;
  compute_t* prev;              // [P, F] out
  const int64_t* batch_sizes;   // [T], on the device that runs the replay
  const int64_t* offsets;       // [T]
  int64_t T, N, F;
  bool reverse;
};

template <typename L, typename scalar_t, typename compute_t>
RNNKIT_HD void replay(const Replay<scalar_t, compute_t>& r, int64_t n, int64_t j) {
  using V = typename L::V;
  V s = L::load(r.init + n * r.F + j);
  for (int64_t k = 0; k < r.T; ++k) {
    const int64_t t = r.reverse ? r.T - 1 - k : k;
    if (n >= r.batch_sizes[t]) continue;
    const int64_t row = r.offsets[t] + n;
    L::store(r.prev + row * r.F + j, s);
    const V m = r.mask ? L::load(r.mask + (t * r.N + n) * r.F + j) : V(static_cast<V>(r.p));
    s = mix(m, s, L::load(r.cand + row * r.ld_cand + j));
  }
}

}  // namespace zoneout
}  // namespace rnnkit

// The persistent time loops of the CUDA layers: one cooperative launch runs every step of one
// layer and direction (cuda/persistent.cu; the plan is common/persistent.h). The CUDA time loop
// (time_loop.cuh: Backend::forward / backward) calls forward() / backward() once, in place of its
// step loop; each returns true when it ran the loop, false when the caller's own loop must run (switched off, or
// the shape does not fit). The input projection before the loop and the weight gradients after
// it stay the layer's: the persistent loop reads and writes the same workspace layout, so the
// backward of either path reads the forward of either.
//
// RNNKIT_CUDA_PERSISTENT: 0, the general loop (per step a cuBLAS product and a pointwise kernel);
// 1, the persistent loop wherever the shape fits (a warning names why it does not); auto (also
// unset or empty), the persistent loop where common/persistent.h's measured rule prefers it and
// the shape fits, the general loop otherwise, silently.
#pragma once

#include <ATen/ATen.h>

#include "../common/gates.h"
#include "../common/plan.h"

namespace rnnkit {
namespace cuda {
namespace persistent {

enum class Cell : int { Lstm = 0, Gru = 1, Rnn = 2 };

// One layer's forward loop. Shapes as in gates.h; the rows of step t are plan.offsets[t] ...
struct ForwardArgs {
  Cell cell;
  const SequencePlan* plan;
  at::Tensor w_hh;          // [G, H], contiguous
  at::Tensor h0;            // [N, H], contiguous: the initial state (read only)
  at::Tensor out;           // [P, H]: h out (RNN: the pre-activations in)
  at::Tensor h_n;           // [N, H]: out, the last state of every row
  at::Tensor c_n;           // [N, H] LSTM: c0 in, c_n out; undefined otherwise
  at::Tensor ws;            // [P, W] LSTM and GRU: pre-activations in, workspace out
  at::Tensor b_hh;          // [3H] GRU (its recurrent bias stays apart), or undefined
  gates::Activation act;    // RNN
  const char* unsupported;  // non-null: an option the persistent loop lacks (e.g. proj_size)
};

// One layer's backward-through-time loop.
struct BackwardArgs {
  Cell cell;
  const SequencePlan* plan;
  at::Tensor w_hh;          // [G, H], contiguous
  at::Tensor h_prev;        // [P, H]: the state each row's step read (GRU)
  at::Tensor c_prev;        // [P, H]: the cell state each row's step read (LSTM)
  at::Tensor out;           // [P, H]: the forward's output (RNN)
  at::Tensor ws;            // [P, W]: the forward's workspace (LSTM, GRU)
  at::Tensor gout;          // [P, H] or undefined: gradient of the output
  at::Tensor dh;            // [N, H]: grad_h_n in, grad_h0 out
  at::Tensor dc;            // [N, H] LSTM: grad_c_n in, grad_c0 out
  at::Tensor dgates;        // [P, G] out: gradients that pass through W_hh (GRU: recurrent side)
  at::Tensor dx;            // [P, G] GRU: out, gradients of the input-side pre-activations
  gates::Activation act;    // RNN
  const char* unsupported;  // as in ForwardArgs
};

bool forward(const ForwardArgs& args);
bool backward(const BackwardArgs& args);

}  // namespace persistent
}  // namespace cuda
}  // namespace rnnkit

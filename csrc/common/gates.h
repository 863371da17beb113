// The gate arithmetic of one time step, forward and backward, for every cell family.
//
// Shared by the CPU kernels (csrc/cpu), which call these templates with at::vec::Vectorized<T>
// registers, and the CUDA kernels (csrc/cuda), which call them with one float or double per
// thread: the tests on the CPU exercise exactly the arithmetic the GPU runs.
//
// Letters used in every shape comment in csrc/:
//   T  time steps             N  batch (the active batch of one step, for packed input)
//   I  input features         H  hidden features (cell state features for LSTM)
//   R  recurrent features: H, or proj_size for an LSTM with a projection
//   G  gate rows: 4H for LSTM (i, f, g, o), 3H for GRU (r, z, n), H for RNN
//   P  rows of a packed sequence: the sum of the batch sizes of all steps (T*N when padded)
// Gate order is torch.nn's, so its weights load unchanged: gate k of hidden unit j in batch row n
// sits at [n * G + k * H + j] (see gate_index).
#pragma once

#include <cstdint>

#include "math.h"

namespace rnnkit {
namespace gates {

using math::rk_exp;
using math::rk_relu;
using math::rk_tanh;
using math::rk_where_positive;

// Where gate k of hidden unit j of batch row n lives in a [N, G] gate buffer with G = gates * H.
RNNKIT_HD int64_t gate_index(int64_t n, int64_t k, int64_t j, int64_t H, int64_t G) {
  return n * G + k * H + j;
}

template <typename V>
RNNKIT_HD V sigmoid(V x) {
  return V(1) / (V(1) + rk_exp(V(0) - x));
}

// ---- LSTM -----------------------------------------------------------------------------------
//   i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
//   c = f ⊙ c_prev + i ⊙ g    h = o ⊙ tanh(c)
// where a = W_ih x + b_ih + W_hh h_prev + b_hh are the pre-activations.
template <typename V>
struct LstmForward {
  V i, f, g, o, c, h;
};

template <typename V>
RNNKIT_HD LstmForward<V> lstm_forward(V a_i, V a_f, V a_g, V a_o, V c_prev) {
  LstmForward<V> r;
  r.i = sigmoid(a_i);
  r.f = sigmoid(a_f);
  r.g = rk_tanh(a_g);
  r.o = sigmoid(a_o);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * rk_tanh(r.c);
  return r;
}

// Gradients of the pre-activations and of c_prev, given dh (of h = o ⊙ tanh(c)) and dc_next
// (the gradient that reaches c from the next step or from c_n).
template <typename V>
struct LstmBackward {
  V da_i, da_f, da_g, da_o, dc_prev;
};

template <typename V>
RNNKIT_HD LstmBackward<V> lstm_backward(V dh, V dc_next, V i, V f, V g, V o, V c, V c_prev) {
  const V one(1);
  const V tc = rk_tanh(c);
  const V dc = dc_next + dh * o * (one - tc * tc);
  LstmBackward<V> r;
  r.da_i = dc * g * i * (one - i);
  r.da_f = dc * c_prev * f * (one - f);
  r.da_g = dc * i * (one - g * g);
  r.da_o = dh * tc * o * (one - o);
  r.dc_prev = dc * f;
  return r;
}

// ---- GRU ------------------------------------------------------------------------------------
//   r = σ(x_r + h_r)   z = σ(x_z + h_z)   n = tanh(x_n + r ⊙ h_n)   h = (1 - z) ⊙ n + z ⊙ h_prev
// where x = W_ih x + b_ih and h_ = W_hh h_prev + b_hh (the reset gate acts after the recurrent
// product, as in torch.nn and cuDNN).
template <typename V>
struct GruForward {
  V r, z, n, h;
};

template <typename V>
RNNKIT_HD GruForward<V> gru_forward(V x_r, V x_z, V x_n, V h_r, V h_z, V h_n, V h_prev) {
  GruForward<V> out;
  out.r = sigmoid(x_r + h_r);
  out.z = sigmoid(x_z + h_z);
  out.n = rk_tanh(x_n + out.r * h_n);
  out.h = (V(1) - out.z) * out.n + out.z * h_prev;
  return out;
}

// Gradients of the input-side pre-activations (dx_*) and of the recurrent-side ones (dh_*); they
// differ only in the n gate, where the recurrent side is scaled by r. dh_prev_direct is the part
// of dh_prev that does not pass through W_hh (the z ⊙ h_prev path).
template <typename V>
struct GruBackward {
  V dx_r, dx_z, dx_n, dh_n, dh_prev_direct;
};

template <typename V>
RNNKIT_HD GruBackward<V> gru_backward(V dh, V r, V z, V n, V h_n, V h_prev) {
  const V one(1);
  const V dn = dh * (one - z) * (one - n * n);
  const V dz = dh * (h_prev - n);
  GruBackward<V> out;
  out.dx_r = dn * h_n * r * (one - r);
  out.dx_z = dz * z * (one - z);
  out.dx_n = dn;
  out.dh_n = dn * r;
  out.dh_prev_direct = dh * z;
  return out;
}

// ---- Elman RNN ------------------------------------------------------------------------------
//   h = act(W_ih x + b_ih + W_hh h_prev + b_hh),  act = tanh or relu
enum class Activation : int { Tanh = 0, Relu = 1 };

template <typename V>
RNNKIT_HD V rnn_forward(V a, Activation act) {
  return act == Activation::Tanh ? rk_tanh(a) : rk_relu(a);
}

// Gradient of the pre-activation from dh and the step's output h.
template <typename V>
RNNKIT_HD V rnn_backward(V dh, V h, Activation act) {
  return act == Activation::Tanh ? dh * (V(1) - h * h) : rk_where_positive(h, dh);
}

}  // namespace gates
}  // namespace rnnkit

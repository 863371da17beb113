"""The LSTM layer's first gradient as a differentiable function with its own backward: second
derivatives without recomputing the forward through autograd.

``rnnkit/double_backward.py`` makes every operator's first gradient differentiable by running
the layer again, step by step, through torch's autograd, which costs about 13 times the first
backward. For the commonest case, an LSTM layer (either direction) on padded input in
float32/float64, without proj_size or zoneout, :class:`LstmGrad` does better: its forward is the
first backward (the adjoint recurrence, also keeping its per-step gate gradients), and its
backward is the first backward's vector-Jacobian product written out:

With the first gradient B = J(θ)ᵀ u of the layer F (θ = input, states, weights; u = the output
gradients) and v the cotangent that arrives for B (one tensor per entry of θ),
  - the cotangent of u is J v: the layer's tangent (forward-mode) recurrence in direction v;
  - the cotangent of θ is ∂/∂θ ⟨u, J(θ) v⟩: a backward pass through the layer with the adjoint
    of the tangent recurrence (which is the first backward's own δ) supplying second-derivative
    terms as sources on the gates, the cell state and the previous hidden state.

So the sequential work is three recurrences (first backward, tangent, second adjoint) with one
small product per step each; everything else is whole-sequence products and pointwise
arithmetic. On the CPU the recurrences (and the second adjoint's sources) run in C++
(csrc/cpu/lstm_second_order.h); elsewhere as the loops of torch operations below. Third and
higher derivatives fall back to double_backward.py (exact, slower). docs/kernels.md gives the
cost.

Notation (per step t in processing order, rows N, hidden H): gates i, f, g, o after their
activations; c the cell state, τ = tanh(c), h = o τ; a the pre-activations; primes on a
tangent (ȧ, ċ, ḣ); δ the first backward's adjoints; λ the second backward's.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .double_backward import backward as differentiable_backward


def supports(input: Tensor, batch_sizes: Optional[Tensor], c0: Tensor, w_hr: Optional[Tensor],
             workspace: Tensor, zoneout: tuple) -> bool:
    """Whether LstmGrad handles this call: padded input in float32/float64, no projection, no
    zoneout, not while torch.compile traces. Anything else takes double_backward.py."""
    zoneout_h, p_h, zoneout_c, p_c = zoneout
    return (batch_sizes is None and w_hr is None and input.dtype in (torch.float32, torch.float64)
            and workspace.dtype == input.dtype and workspace.dim() == 2
            and workspace.shape[1] == 5 * c0.shape[-1] and zoneout_h is None
            and zoneout_c is None and p_h == 0.0 and p_c == 0.0
            and not torch.compiler.is_compiling())


#: Whether the CPU runs the recurrences in C++ (tests switch it off to check the loops of torch
#: operations that other devices run).
NATIVE_CPU_LOOPS = True


def reached(t: Optional[Tensor]) -> bool:
    """Whether the backward now running will use a gradient for t: False for a tensor that
    requires none, or whose gradient edge the engine will not execute (torch.autograd.grad with
    inputs that do not include it, as a gradient penalty's grad of the input alone). True when
    the engine cannot say."""
    if t is None or not t.requires_grad:
        return False
    try:
        return torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node)
    except (RuntimeError, AttributeError):
        return True


class _Steps:
    """The saved forward of one padded layer call, arranged per step in processing order."""

    def __init__(self, x: Tensor, h0: Tensor, c0: Tensor, output: Tensor, workspace: Tensor,
                 reverse: bool):
        T, N, _ = x.shape
        H = c0.shape[-1]
        order = (lambda s: s.flip(0)) if reverse else (lambda s: s)
        self.order = order
        self.x = order(x)  # [T, N, I], step k of processing is self.x[k]
        ws = order(workspace.view(T, N, 5 * H))
        self.i, self.f, self.g, self.o, self.c = ws.split(H, dim=-1)
        h = order(output)
        self.h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
        self.c_prev = torch.cat([c0.unsqueeze(0), self.c[:-1]])
        self.tau = torch.tanh(self.c)
        self.T, self.N, self.H = T, N, H
        # The recurrences run in C++ on the CPU (rnnkit::lstm_adjoint_steps, lstm_tangent_steps,
        # lstm_second_order_sources: they read the workspace rows and form the coefficients
        # below themselves), as loops of torch operations elsewhere.
        self.native = NATIVE_CPU_LOOPS and x.device.type == "cpu"
        if self.native:
            self.rows = ws.contiguous()  # [T, N, 5H]: i, f, g, o, c per row

    @functools.cached_property
    def tanh_prime(self) -> Tensor:
        return 1 - self.tau * self.tau  # tanh'(c)

    @functools.cached_property
    def k(self) -> Tensor:
        return self.o * self.tanh_prime  # ∂h/∂c

    @functools.cached_property
    def act(self) -> Tensor:
        """The derivative of each activation at its pre-activation: σ' = s(1-s), tanh' = 1-g²."""
        i, f, g, o = self.i, self.f, self.g, self.o
        return torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], dim=-1)

    @functools.cached_property
    def coef(self) -> Tensor:
        """∂(i, f, g, o)/∂(pre-activation) times what multiplies each gate in c and h:
        da = [dc g σ'(i), dc c_prev σ'(f), dc i tanh'(g), dh τ σ'(o)]."""
        return self.act * torch.cat([self.g, self.c_prev, self.i, self.tau], dim=-1)

    @property
    def coef3(self) -> Tensor:  # gates i, f, g: [T, N, 3, H]
        return self.coef[..., :3 * self.H].view(self.T, self.N, 3, self.H)

    @property
    def coef_o(self) -> Tensor:
        return self.coef[..., 3 * self.H:]

    def second(self) -> Tensor:
        """coef's derivative through each gate's own activation: σ'' = σ'(1-2s), tanh'' =
        -2 g tanh'; so coef ⊙ [1-2i, 1-2f, -2g, 1-2o]."""
        i, f, g, o = self.i, self.f, self.g, self.o
        return self.coef * torch.cat([1 - 2 * i, 1 - 2 * f, -2 * g, 1 - 2 * o], dim=-1)


def _adjoint(s: _Steps, w_hh: Tensor, src_h: Optional[Tensor], src_c: Optional[Tensor],
             src_a: Optional[Tensor], dh_last: Optional[Tensor], dc_last: Optional[Tensor]):
    """The LSTM's backward recurrence with sources: per step (last to first)
        dh_t = src_h[t] + da_{t+1} W_hh,   dc_t = dh_t k_t + dc_{t+1} f_{t+1} + src_c[t],
        da_t = [dc_t, dc_t, dc_t, dh_t] ⊙ coef_t (+ src_a[t]),
    with dh_last and dc_last added at the last step. A source given as None is zero.
    Returns da [T, N, 4H], dh [T, N, H], dc [T, N, H]."""
    if s.native:
        return torch.ops.rnnkit.lstm_adjoint_steps(
            *(None if t is None else t.contiguous() for t in (src_h, src_c, src_a, dh_last,
                                                                dc_last)),
            s.rows, s.c_prev, s.tau, w_hh.contiguous())
    T, N, H = s.T, s.N, s.H
    da = s.c.new_empty((T, N, 4 * H))
    dh = s.c.new_empty((T, N, H))
    dc = s.c.new_empty((T, N, H))
    da3, da_o = da[..., :3 * H].view(T, N, 3, H), da[..., 3 * H:]  # gates i, f, g | o
    src3 = None if src_a is None else src_a[..., :3 * H].view(T, N, 3, H)
    for t in range(T - 1, -1, -1):
        last = t == T - 1
        if last:
            dh_t = dh[t].zero_() if src_h is None else dh[t].copy_(src_h[t])
            if dh_last is not None:
                dh_t += dh_last
        elif src_h is None:
            dh_t = torch.mm(da[t + 1], w_hh, out=dh[t])
        else:
            dh_t = torch.addmm(src_h[t], da[t + 1], w_hh, out=dh[t])
        if src_c is None:
            dc_t = torch.mul(dh_t, s.k[t], out=dc[t])
        else:
            dc_t = torch.addcmul(src_c[t], dh_t, s.k[t], out=dc[t])
        if last:
            if dc_last is not None:
                dc_t += dc_last
        else:
            dc_t.addcmul_(dc[t + 1], s.f[t + 1])
        if src_a is None:
            torch.mul(dc_t.unsqueeze(1), s.coef3[t], out=da3[t])
            torch.mul(dh_t, s.coef_o[t], out=da_o[t])
        else:
            torch.addcmul(src3[t], dc_t.unsqueeze(1), s.coef3[t], out=da3[t])
            torch.addcmul(src_a[t, :, 3 * H:], dh_t, s.coef_o[t], out=da_o[t])
    return da, dh, dc


def _tangent(s: _Steps, w_hh: Tensor, a_in: Tensor, h0_dot: Tensor, c0_dot: Tensor):
    """The layer's forward-mode recurrence: per step
        ȧ_t = a_in[t] + ḣ_{t-1} W_hhᵀ,
        ċ_t = f ċ_{t-1} + (ȧ ⊙ act ⊙ [g, c_prev, i]) summed over gates,
        ḣ_t = ȧ_o act_o τ + k ċ_t.
    Returns ȧ [T, N, 4H], ċ [T, N, H], ḣ [T, N, H]."""
    if s.native:
        return torch.ops.rnnkit.lstm_tangent_steps(a_in.contiguous(), h0_dot.contiguous(),
                                                   c0_dot.contiguous(), s.rows, s.c_prev, s.tau,
                                                   w_hh.contiguous())
    T, N, H = s.T, s.N, s.H
    a_dot = torch.empty_like(a_in)
    c_dot = a_in.new_empty((T, N, H))
    h_dot = a_in.new_empty((T, N, H))
    w_t = w_hh.t()
    h_prev, c_prev = h0_dot, c0_dot
    for t in range(T):
        a_t = torch.addmm(a_in[t], h_prev, w_t, out=a_dot[t])
        inner = (a_t[:, :3 * H].view(N, 3, H) * s.coef3[t]).sum(1)
        c_t = torch.addcmul(inner, s.f[t], c_prev, out=c_dot[t])
        h_prev = torch.addcmul(a_t[:, 3 * H:] * s.coef_o[t], s.k[t], c_t, out=h_dot[t])
        c_prev = c_t
    return a_dot, c_dot, h_dot


def _sources(s: _Steps, a_dot: Tensor, c_dot: Tensor, c0_dot: Tensor, dh: Tensor, dc: Tensor):
    """The second adjoint's sources, ∂/∂(gates, c) of ⟨δ, tangent⟩. On the pre-activations of
    gates i, f, g, o:
        src_a = [dc, dc, dc, dh] ⊙ (coef' ⊙ ȧ + act ⊙ [ġ, ċ_prev, i̇, tanh'(c) ċ])
    (coef' = _Steps.second()); on c_t: src_c = dh tanh'(c) (ȯ - 2 o τ ċ) + dc_{t+1} ḟ_{t+1}.
    (The source on h_{t-1}, da_t v_w_hh, is a product: LstmGrad.backward adds it.)"""
    if s.native:
        return torch.ops.rnnkit.lstm_second_order_sources(s.rows, s.c_prev, s.tau, a_dot, c_dot,
                                                         c0_dot.contiguous(), dh, dc)
    T, N, H = s.T, s.N, s.H
    act = s.act
    src_a = s.second().mul_(a_dot)
    i_dot, f_dot, g_dot, o_dot = (a_dot[..., k * H:(k + 1) * H] * act[..., k * H:(k + 1) * H]
                                  for k in range(4))
    c_prev_dot = torch.cat([c0_dot.unsqueeze(0), c_dot[:-1]])
    src_i, src_f, src_g, src_o = src_a.split(H, dim=-1)
    src_i.addcmul_(act[..., :H], g_dot)
    src_f.addcmul_(act[..., H:2 * H], c_prev_dot)
    src_g.addcmul_(act[..., 2 * H:3 * H], i_dot)
    src_o.addcmul_(act[..., 3 * H:], s.tanh_prime * c_dot)
    src_a[..., :3 * H].view(T, N, 3, H).mul_(dc.unsqueeze(2))
    src_o.mul_(dh)
    src_c = (o_dot - 2 * s.o * s.tau * c_dot).mul_(s.tanh_prime).mul_(dh)
    src_c[:-1].addcmul_(dc[1:], f_dot[1:])  # c_t multiplies ḟ_{t+1} in ċ_{t+1}
    return src_a, src_c


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _zero_or(t: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


class LstmGrad(torch.autograd.Function):
    """(input, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_output, grad_h_n, grad_c_n; the forward's
    output and workspace, reverse, which of (w_ih, w_hh, bias) need a gradient) -> the first
    gradients (input, h0, c0, w_ih, w_hh, bias), None for a weight not wanted. Differentiable once
    more by its own backward. The bias gradient is that of b_ih and of b_hh alike (either may be
    None); the output gradients must be tensors (zeros where none came)."""

    @staticmethod
    def forward(ctx, input, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_output, grad_h_n, grad_c_n,
                output, workspace, reverse, weights_wanted):
        s = _Steps(input, h0, c0, output, workspace, reverse)
        da, dh, dc = _adjoint(s, w_hh, s.order(grad_output), None, None, grad_h_n, grad_c_n)
        flat_da = _flat(da)
        grad_input = s.order(da @ w_ih)
        grad_h0 = da[0] @ w_hh
        grad_c0 = dc[0] * s.f[0]
        want_w_ih, want_w_hh, want_bias = weights_wanted
        grad_w_ih = flat_da.t() @ _flat(s.x) if want_w_ih else None
        grad_w_hh = flat_da.t() @ _flat(s.h_prev) if want_w_hh else None
        grad_bias = flat_da.sum(0) if want_bias else None
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_output, grad_h_n,
                              grad_c_n, da, dh, dc)
        ctx.reverse = reverse
        ctx.steps = s  # the arranged forward, for backward (it holds no graph)
        return grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias

    @staticmethod
    def backward(ctx, v_input, v_h0, v_c0, v_w_ih, v_w_hh, v_bias):
        input, h0, c0, w_ih, w_hh, *_, da, dh, dc = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled() and any(needs[:10]):
            return _third_order(ctx, (v_input, v_h0, v_c0, v_w_ih, v_w_hh, v_bias))
        s = ctx.steps
        T, N, H = s.T, s.N, s.H
        x_dot = None if v_input is None else s.order(v_input)
        h0_dot, c0_dot = _zero_or(v_h0, h0), _zero_or(v_c0, c0)

        # tangent of the pre-activations from everything but the recurrent state
        a_in = None
        for left, right in ((x_dot, w_ih), (s.x, v_w_ih), (s.h_prev, v_w_hh)):
            if left is not None and right is not None:
                if a_in is None:
                    a_in = torch.mm(_flat(left), right.t())
                else:
                    a_in.addmm_(_flat(left), right.t())
        a_in = (input.new_zeros((T * N, 4 * H)) if a_in is None else a_in).view(T, N, 4 * H)
        if v_bias is not None:
            a_in += v_bias
        a_dot, c_dot, h_dot = _tangent(s, w_hh, a_in, h0_dot, c0_dot)

        # the cotangents of the output gradients: J v
        g_output = s.order(h_dot) if needs[7] else None
        g_h_n = h_dot[-1] if needs[8] else None
        g_c_n = c_dot[-1] if needs[9] else None
        if not any(needs[:7]):
            return (None,) * 7 + (g_output, g_h_n, g_c_n) + (None,) * 4

        # Second-derivative sources of the backward through the forward (_sources).
        src_a, src_c = _sources(s, a_dot, c_dot, c0_dot, dh, dc)
        f0 = s.f[0]
        f_dot0 = a_dot[0, :, H:2 * H] * f0 * (1 - f0)  # ḟ of the first step
        src_h = None
        if v_w_hh is not None:
            src_h = torch.zeros_like(dh)
            src_h[:-1] = da[1:] @ v_w_hh
        lam_a, _, lam_c = _adjoint(s, w_hh, src_h, src_c, src_a, None, None)

        g_input = g_h0 = g_c0 = g_w_ih = g_w_hh = g_bias = None
        flat_lam, flat_da = _flat(lam_a), _flat(da)
        if needs[0]:
            g = lam_a @ w_ih
            if v_w_ih is not None:
                g.view(T * N, -1).addmm_(flat_da, v_w_ih)
            g_input = s.order(g)
        if needs[1]:
            g_h0 = lam_a[0] @ w_hh
            if v_w_hh is not None:
                g_h0.addmm_(da[0], v_w_hh)
        if needs[2]:
            g_c0 = lam_c[0] * s.f[0] + dc[0] * f_dot0
        if needs[3]:
            g_w_ih = flat_lam.t() @ _flat(s.x)
            if x_dot is not None:
                g_w_ih.addmm_(flat_da.t(), _flat(x_dot))
        if needs[4]:
            h_prev_dot = torch.cat([h0_dot.unsqueeze(0), h_dot[:-1]])
            g_w_hh = (flat_lam.t() @ _flat(s.h_prev)).addmm_(flat_da.t(), _flat(h_prev_dot))
        if needs[5] or needs[6]:
            g_bias = flat_lam.sum(0)
        return (g_input, g_h0, g_c0, g_w_ih, g_w_hh, g_bias if needs[5] else None,
                g_bias if needs[6] else None, g_output, g_h_n, g_c_n, None, None, None, None)


def _third_order(ctx, cotangents):
    """The backward of LstmGrad when its own result must be differentiable (a third derivative):
    the first gradient rebuilt through double_backward.py's differentiable recomputation, and
    its vector-Jacobian product taken with a graph."""
    saved = ctx.saved_tensors[:10]
    targets = [k for k, (t, n) in enumerate(zip(saved, ctx.needs_input_grad))
               if n and t is not None and t.requires_grad]
    with torch.enable_grad():
        # Fresh aliases, as in double_backward.backward: each gradient is the one that reaches
        # that argument directly (grad_output may itself be computed from input).
        wrt = [t.view_as(t) if k in targets else t for k, t in enumerate(saved)]
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_output, grad_h_n, grad_c_n = wrt
        args = (input, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, ctx.reverse, True)
        first = differentiable_backward("lstm", [isinstance(a, Tensor) for a in args],
                                        (grad_output, grad_h_n, grad_c_n), args)
        bias = first[6] if b_ih is not None else first[7]
        outs = (first[0], first[2], first[3], first[4], first[5], bias)
        pairs = [(o, v) for o, v in zip(outs, cotangents) if o is not None and v is not None]
        got = torch.autograd.grad([o for o, _ in pairs], [wrt[k] for k in targets],
                                  [v for _, v in pairs], create_graph=True,
                                  allow_unused=True) if pairs and targets else ()
    result: list[Optional[Tensor]] = [None] * 14
    for k, g in zip(targets, got):
        result[k] = g
    return tuple(result)

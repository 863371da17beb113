"""The padded LSTM's own second-order path (rnnkit/lstm_second_order.py): which calls take it,
and that its backward equals the differentiable recomputation of double_backward.py and
torch.nn's, in float64, at awkward sizes, for every input including the output gradients."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import lstm_second_order

from ..conftest import ALL_DEVICES

ops = torch.ops.rnnkit
F64 = torch.float64
TOL = 1e-10


def _count_calls(monkeypatch) -> list[str]:
    """Records 'forward' / 'backward' each time LstmGrad's run."""
    calls: list[str] = []
    for name in ("forward", "backward"):
        fn = getattr(lstm_second_order.LstmGrad, name)
        monkeypatch.setattr(lstm_second_order.LstmGrad, name,
                            staticmethod(lambda *a, _f=fn, _n=name: calls.append(_n) or _f(*a)))
    return calls


def _penalty(module, x, h0=None, c0=None):
    """A penalty on every first gradient (input, states, parameters), each weighted differently,
    with the output gradient a function of the output (so it depends on x too); returns the
    penalty's gradients of x, the states and the parameters."""
    states = None if h0 is None else (h0, c0)
    out, (h_n, c_n) = module(x, states)
    loss = out.pow(3).sum() + (h_n * c_n).sum()
    wrt = [x, *([] if h0 is None else [h0, c0]), *module.parameters()]
    first = torch.autograd.grad(loss, wrt, create_graph=True)
    penalty = sum((k + 1) * g.pow(2).sum() for k, g in enumerate(first))
    return torch.autograd.grad(penalty, wrt)


CASES = [  # T, N, I, H, bidirectional, bias, with states
    (1, 1, 2, 3, False, True, True),
    (6, 1, 3, 5, False, False, False),
    (9, 4, 2, 7, True, True, True),
    (4, 3, 5, 1, True, False, True),
]


@pytest.mark.parametrize("native", [True, False], ids=["C++ loops", "torch loops"])
@pytest.mark.parametrize("T, N, I, H, bidirectional, bias, with_states", CASES,
                         ids=[f"T={c[0]} N={c[1]} I={c[2]} H={c[3]}"
                              f"{' bidir' if c[4] else ''}{'' if c[5] else ' no bias'}"
                              f"{' states' if c[6] else ''}" for c in CASES])
def test_penalty_matches_the_recomputed_path_and_torch_nn(monkeypatch, T, N, I, H, bidirectional,
                                                          bias, with_states, native):
    """On the CPU the two recurrences run in C++ (rnnkit::lstm_adjoint_steps, tangent_steps);
    the loops of torch operations that other devices run are checked here on the CPU too."""
    monkeypatch.setattr(lstm_second_order, "NATIVE_CPU_LOOPS", native)
    torch.manual_seed(T * 100 + H)
    theirs = torch.nn.LSTM(I, H, bias=bias, bidirectional=bidirectional).double()
    ours = rnnkit.from_torch(theirs)
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    h0 = torch.randn(D, N, H, dtype=F64, requires_grad=True) if with_states else None
    c0 = torch.randn(D, N, H, dtype=F64, requires_grad=True) if with_states else None
    calls = _count_calls(monkeypatch)
    fast = _penalty(ours, x, h0, c0)
    assert calls.count("backward") == D  # one LstmGrad per direction
    reference = _penalty(theirs, x, h0, c0)
    monkeypatch.setattr(lstm_second_order, "supports", lambda *a: False)
    recomputed = _penalty(ours, x, h0, c0)
    for a, b, c in zip(fast, recomputed, reference):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
        torch.testing.assert_close(a, c, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_of_the_first_gradient_in_all_its_inputs(device, reverse):
    """The first gradient as a function of the layer's inputs and of the output gradients:
    gradcheck (numerical against LstmGrad's backward) in float64."""
    gen = torch.Generator().manual_seed(3)
    T, N, I, H = 3, 2, 2, 3

    def rand(*shape):
        return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1).to(device).requires_grad_()

    x, h0, c0 = rand(T, N, I), rand(N, H), rand(N, H)
    w_ih, w_hh, b_ih, b_hh = rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H)
    dy, dh, dc = rand(T, N, H), rand(N, H), rand(N, H)

    def first(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dh, dc):
        out, h_n, c_n, _ = ops.lstm(x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse)
        return torch.autograd.grad((out, h_n, c_n), (x, h0, c0, w_ih, w_hh, b_ih, b_hh),
                                   (dy, dh, dc), create_graph=True)

    assert torch.autograd.gradcheck(first, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dh, dc))


def test_third_derivative_matches_torch_nn(monkeypatch):
    """A third derivative takes the recomputed path from LstmGrad's backward: still exact."""
    torch.manual_seed(5)
    theirs = torch.nn.LSTM(2, 3).double()
    ours = rnnkit.from_torch(theirs)
    calls = _count_calls(monkeypatch)
    results = []
    for module in (ours, theirs):
        x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
        x.data.copy_(torch.linspace(-1, 1, 16, dtype=F64).view(4, 2, 2))
        (g,) = torch.autograd.grad(module(x)[0].pow(3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gg.sin().sum(), [x, *module.parameters()]))
    assert "backward" in calls
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_other_forms_take_the_recomputed_path(monkeypatch):
    """Packed input, proj_size, zoneout, and the other cells are left to double_backward.py."""
    calls = _count_calls(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 2, 1])
    for module, inp in ((rnnkit.LSTM(2, 3).double(), packed),
                        (rnnkit.LSTM(2, 3, proj_size=2).double(), x),
                        (rnnkit.LSTM(2, 3, zoneout=0.2).double().eval(), x),
                        (rnnkit.GRU(2, 3).double(), x)):
        out = module(inp)[0]
        out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
        torch.autograd.grad(out.sum(), x, create_graph=True)
    assert calls == []
    rnnkit.LSTM(2, 3).double()(x)[0].sum().backward(create_graph=True)
    assert calls == ["forward"]


def test_float32_takes_it_and_bfloat16_does_not(monkeypatch):
    calls = _count_calls(monkeypatch)
    module = rnnkit.LSTM(2, 3)
    x = torch.randn(4, 3, 2, requires_grad=True)
    torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)
    assert calls == ["forward"]
    calls.clear()
    xb = x.detach().bfloat16().requires_grad_()
    torch.autograd.grad(module.bfloat16()(xb)[0].float().sum(), xb, create_graph=True)
    assert calls == []


def test_weight_gradients_the_engine_will_not_use_are_skipped(monkeypatch):
    """A penalty's grad of the input alone asks for no weight gradient: none is computed (the
    engine's own execution plan says so); a full backward with create_graph gets them all."""
    wanted = []
    forward = lstm_second_order.LstmGrad.forward
    monkeypatch.setattr(lstm_second_order.LstmGrad, "forward",
                        staticmethod(lambda *a: wanted.append(a[-1]) or forward(*a)))
    torch.manual_seed(0)
    module = rnnkit.LSTM(2, 3).double()
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
    assert wanted == [(False, False, False)]
    grads = torch.autograd.grad(g.pow(2).sum(), list(module.parameters()))
    assert all(p.abs().sum() > 0 for p in grads)
    wanted.clear()
    module(x)[0].pow(2).sum().backward(create_graph=True)
    assert wanted == [(True, True, True)]
    assert all(p.grad is not None and p.grad.requires_grad for p in module.parameters())


def _forward_steps(T=2, N=3, H=2):
    """(steps, c_prev, tau) of a layer call with these sizes, as the recurrence operators take."""
    return torch.zeros(T, N, 5 * H), torch.zeros(T, N, H), torch.zeros(T, N, H)


@pytest.mark.parametrize("op, args, match", [
    ("lstm_tangent_steps", lambda: (torch.zeros(2, 3, 8), torch.zeros(3, 2), torch.zeros(3, 2),
                                    *_forward_steps(), torch.zeros(8, 3)),
     r"expected w_hh as a contiguous CPU tensor of shape \[8, 2\].*got shape \[8, 3\]"),
    ("lstm_adjoint_steps", lambda: (None, None, None, None, None, torch.zeros(2, 3, 10),
                                    torch.zeros(3, 2, 2).transpose(0, 1), torch.zeros(2, 3, 2),
                                    torch.zeros(8, 2)),
     r"expected c_prev as a contiguous CPU tensor of shape \[2, 3, 2\].*not contiguous"),
    ("lstm_adjoint_steps", lambda: (None, None, None, None, None, torch.zeros(2, 3, 9),
                                    torch.zeros(2, 3, 2), torch.zeros(2, 3, 2),
                                    torch.zeros(8, 2)),
     r"expected steps as a contiguous CPU tensor of shape \[2, 3, 10\].*got shape \[2, 3, 9\]"),
    ("lstm_second_order_sources", lambda: (*_forward_steps(H=2), torch.zeros(2, 3, 8),
                                           torch.zeros(2, 3, 2), torch.zeros(3, 2),
                                           torch.zeros(2, 3, 2), torch.zeros(2, 3, 3)),
     r"expected dc as a contiguous CPU tensor of shape \[2, 3, 2\].*got shape \[2, 3, 3\]"),
    ("lstm_adjoint_steps", lambda: (None, None, None, None, None,
                                    *(t.half() for t in _forward_steps()), torch.zeros(8, 2)),
     "expected float32 or float64, got Half"),
])
def test_the_recurrence_operators_name_what_they_expected(op, args, match):
    with pytest.raises(RuntimeError, match=match):
        getattr(ops, op)(*args())


def test_stacked_bidirectional_penalty_matches_torch_nn(monkeypatch):
    """Two bidirectional layers: four LstmGrad calls, the second layer's input being the first
    layer's output (so its input gradient flows on through the first layer's LstmGrad)."""
    torch.manual_seed(7)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    ours = rnnkit.from_torch(theirs)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=F64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=F64, requires_grad=True)
    calls = _count_calls(monkeypatch)
    fast = _penalty(ours, x, h0, c0)
    assert calls.count("forward") == 4 and calls.count("backward") == 4
    for a, b in zip(fast, _penalty(theirs, x, h0, c0)):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_the_recurrence_operators_pass_opcheck():
    """Their fakes agree with the kernels (shapes, dtypes, no aliasing), as the contract asks of
    every rnnkit operator. They are not differentiable: LstmGrad calls them inside a backward."""
    T, N, H = 3, 2, 5
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(shape, generator=gen, dtype=F64)

    steps, c_prev, tau = rand(T, N, 5 * H), rand(T, N, H), rand(T, N, H)
    w_hh = rand(4 * H, H)
    cases = [
        (ops.lstm_adjoint_steps, (rand(T, N, H), None, None, rand(N, H), rand(N, H), steps, c_prev,
                                  tau, w_hh)),
        (ops.lstm_adjoint_steps, (None, rand(T, N, H), rand(T, N, 4 * H), None, None, steps,
                                  c_prev, tau, w_hh)),
        (ops.lstm_tangent_steps, (rand(T, N, 4 * H), rand(N, H), rand(N, H), steps, c_prev, tau,
                                  w_hh)),
        (ops.lstm_second_order_sources, (steps, c_prev, tau, rand(T, N, 4 * H), rand(T, N, H),
                                         rand(N, H), rand(T, N, H), rand(T, N, H))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))

"""Second derivatives of every operator and module (issue 16): gradgradcheck in float64 at tiny
awkward sizes, gradient penalties against torch.nn's CPU path, and no silent first-order-only
path (torch's "autograd kernel was not registered" warning is an error here)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import double_backward

from ..conftest import ALL_DEVICES

ops = torch.ops.rnnkit
F64 = torch.float64
TOL = 1e-10


def _rand(gen: torch.Generator, device: str, *shape: int) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1).to(device).requires_grad_()


def _batch_sizes(lengths: list[int]) -> torch.Tensor:
    """batch_sizes (T,) of sequences with these lengths, longest first."""
    return torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])


# One layer operator call: (name, T or packed lengths, N, proj, reverse, biases, nonlinearity).
LAYER_FORMS = [
    ("lstm", "T=1", [1], False, False, True, None),
    ("lstm", "T=5, reverse", [5, 5], False, True, True, None),
    ("lstm", "T=6, N=1, no bias", [6], False, False, False, None),
    ("lstm", "packed 4,2,1, proj_size", [4, 2, 1], True, False, True, None),
    ("lstm", "packed 3,1, reverse, proj_size, no bias", [3, 1], True, True, False, None),
    ("gru", "T=1", [1], False, False, True, None),
    ("gru", "packed 4,2,1, reverse", [4, 2, 1], False, True, True, None),
    ("gru", "T=5, no b_hh", [5, 5], False, False, "ih", None),
    ("rnn", "T=5, tanh", [5], False, False, True, "tanh"),
    ("rnn", "packed 4,2,1, reverse, relu", [4, 2, 1], False, True, True, "relu"),
    ("rnn", "packed 3,2, tanh, no bias", [3, 2], False, False, False, "tanh"),
]


def _layer_call(form, device: str, seed: int):
    """(function of the differentiable tensors, those tensors) for one layer operator form."""
    op, _, lengths, proj, reverse, biases, act = form
    gen = torch.Generator().manual_seed(seed)
    I, H, R = 2, 3, 2  # input, hidden, projection: small and unequal
    G = {"lstm": 4, "gru": 3, "rnn": 1}[op] * H
    equal = len(set(lengths)) == 1
    bs = None if equal else _batch_sizes(lengths)
    N, T = len(lengths), lengths[0]
    x = _rand(gen, device, T, N, I) if equal else _rand(gen, device, sum(lengths), I)
    Rh = R if proj else H
    h0 = _rand(gen, device, N, Rh)
    w_ih, w_hh = _rand(gen, device, G, I), _rand(gen, device, G, Rh)
    b_ih = _rand(gen, device, G) if biases else None
    b_hh = _rand(gen, device, G) if biases is True else None
    if op == "lstm":
        c0 = _rand(gen, device, N, H)
        w_hr = _rand(gen, device, R, H) if proj else None
        tensors = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]

        def call(*ts):
            it = iter(ts)
            a = [next(it) if t is not None else None
                 for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)]
            return ops.lstm(a[0], bs, *a[1:], reverse)[:3]
    elif op == "gru":
        tensors = [t for t in (x, h0, w_ih, w_hh, b_ih, b_hh) if t is not None]

        def call(*ts):
            it = iter(ts)
            a = [next(it) if t is not None else None for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
            return ops.gru(a[0], bs, *a[1:], reverse)[:2]
    else:
        tensors = [t for t in (x, h0, w_ih, w_hh, b_ih, b_hh) if t is not None]

        def call(*ts):
            it = iter(ts)
            a = [next(it) if t is not None else None for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
            return ops.rnn(a[0], bs, *a[1:], act, reverse)

    return call, tensors


def _cell_call(op: str, act: str | None, device: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    N, I, H = 1, 2, 3
    G = {"lstm_cell": 4, "gru_cell": 3, "rnn_cell": 1}[op] * H
    x, h = _rand(gen, device, N, I), _rand(gen, device, N, H)
    w = [_rand(gen, device, G, I), _rand(gen, device, G, H), _rand(gen, device, G),
         _rand(gen, device, G)]
    if op == "lstm_cell":
        return (lambda *t: ops.lstm_cell(*t)[:2]), [x, h, _rand(gen, device, N, H), *w]
    if op == "gru_cell":
        return (lambda *t: ops.gru_cell(*t)[:1]), [x, h, *w]
    return (lambda *t: ops.rnn_cell(*t, act)), [x, h, *w]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("form", LAYER_FORMS, ids=[f"{f[0]}: {f[1]}" for f in LAYER_FORMS])
def test_gradgradcheck_layer_operators(device, form):
    """Second derivatives with respect to the input, the states, the weights and the output
    gradients, all at once."""
    call, tensors = _layer_call(form, device, seed=LAYER_FORMS.index(form))
    assert torch.autograd.gradgradcheck(call, tensors, fast_mode=True)


# One layer-normalised operator call: (name, lengths, reverse, zoneout masks).
LAYERNORM_FORMS = [
    ("layernorm_lstm", [1], False, False),
    ("layernorm_lstm", [4, 2, 1], True, True),
    ("layernorm_lstm", [3, 3], False, True),
    ("layernorm_gru", [5, 5], True, False),
    ("layernorm_gru", [4, 2, 1], False, True),
]


def _layernorm_call(form, device: str, seed: int):
    """(function of the differentiable tensors, those tensors) for one layer-normalised form;
    zoneout masks, when on, are fixed 0/1 tensors (not differentiated)."""
    op, lengths, reverse, zoneout = form
    gen = torch.Generator().manual_seed(seed)
    I, H = 2, 3
    lstm = op == "layernorm_lstm"
    G = (4 if lstm else 3) * H
    equal = len(set(lengths)) == 1
    bs = None if equal else _batch_sizes(lengths)
    N, T = len(lengths), lengths[0]
    x = _rand(gen, device, T, N, I) if equal else _rand(gen, device, sum(lengths), I)
    h0 = _rand(gen, device, N, H)
    c0 = _rand(gen, device, N, H) if lstm else None
    w_ih, w_hh, b_ih, b_hh = (_rand(gen, device, G, I), _rand(gen, device, G, H),
                              _rand(gen, device, G), _rand(gen, device, G))
    norm = _rand(gen, device, (10 if lstm else 6) * H)
    masks = [(torch.rand(T, N, H, generator=gen) < 0.5).to(device, F64) if zoneout else None
             for _ in range(2 if lstm else 1)]
    zone = (masks[0], 0.0, masks[1], 0.0) if lstm else (masks[0], 0.0, None, 0.0)
    tensors = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, norm) if t is not None]

    def call(*ts):
        it = iter(ts)
        a = [next(it) if t is not None else None
             for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, norm)]
        out = getattr(ops, op)(a[0], bs, *a[1:], reverse, True, *zone)
        return out[:3] if lstm else out[:2]

    return call, tensors


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("form", LAYERNORM_FORMS,
                         ids=[f"{f[0]} {f[1]} reverse={f[2]} zoneout={f[3]}"
                              for f in LAYERNORM_FORMS])
def test_gradgradcheck_layernorm_operators(device, form):
    """The layer-normalised operators, norm gains and zoneout masks included."""
    call, tensors = _layernorm_call(form, device, seed=LAYERNORM_FORMS.index(form))
    assert torch.autograd.gradgradcheck(call, tensors, fast_mode=True)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_layernorm_exact_first_gradient_matches_the_fused_one(kind):
    """Under create_graph the first gradient comes from the recomputation: it must equal the
    fused kernel's (2-layer bidirectional, packed), and the penalty's gradient must reach every
    parameter."""
    torch.manual_seed(3)
    m = getattr(rnnkit, kind)(2, 3, num_layers=2, bidirectional=True, dtype=F64)
    x, wrap = _input(packed=True)
    fused = torch.autograd.grad(m(wrap(x))[0].data.pow(2).sum(), [x, *m.parameters()])
    exact = torch.autograd.grad(m(wrap(x))[0].data.pow(2).sum(), [x, *m.parameters()],
                                create_graph=True)
    for a, b in zip(fused, exact, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    penalty = sum(g.pow(2).sum() for g in exact)
    second = torch.autograd.grad(penalty, [x, *m.parameters()])
    assert all(g is not None and g.abs().sum() > 0 for g in second)


CELL_FORMS = [("lstm_cell", None), ("gru_cell", None), ("rnn_cell", "tanh"), ("rnn_cell", "relu")]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("op, act", CELL_FORMS)
def test_gradgradcheck_cell_operators(device, op, act):
    call, tensors = _cell_call(op, act, device, seed=7)
    # Full mode (every Jacobian entry): a cell is small enough.
    assert torch.autograd.gradgradcheck(call, tensors)


def test_gradgradcheck_catches_a_first_order_only_backward(monkeypatch):
    """The check above can fail: with the exact path switched off, the C++ backward runs under
    create_graph and the recurrent path is missing from the first gradient's graph."""
    monkeypatch.setattr(double_backward, "wanted", lambda grads, saved: False)
    call, tensors = _layer_call(LAYER_FORMS[1], "cpu", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning is what this test provokes
        assert not torch.autograd.gradgradcheck(call, tensors, fast_mode=True,
                                                raise_exception=False)


# ---- modules ----------------------------------------------------------------------------------
def _module_pair(kind: str, **kwargs):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(2, 3, **kwargs).double()
    return rnnkit.from_torch(theirs), theirs


def _input(packed: bool, seed: int = 0):
    """A (T=4, N=3, I=2) batch; packed with lengths 4, 2, 1 when packed."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 3, 2, generator=gen, dtype=F64) * 2 - 1).requires_grad_()
    return x, (lambda t: pack_padded_sequence(t, [4, 2, 1])) if packed else (lambda t: t)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind, kwargs", [
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"num_layers": 2, "bidirectional": True, "nonlinearity": "relu"}),
], ids=["LSTM", "LSTM proj_size", "GRU", "RNN relu"])
def test_gradgradcheck_modules(device, kind, kwargs):
    """Multi-layer bidirectional modules on packed input, the input and every parameter."""
    ours = _module_pair(kind, **kwargs)[0].to(device)
    names = [n for n, _ in ours.named_parameters()]
    x, wrap = _input(packed=True)
    x = x.detach().to(device).requires_grad_()
    params = [p.detach().requires_grad_() for p in ours.parameters()]

    def call(x, *ps):
        out = torch.func.functional_call(ours, dict(zip(names, ps)), (wrap(x),))
        data = out[0].data
        return (data, *out[1]) if kind == "LSTM" else (data, out[1])

    assert torch.autograd.gradgradcheck(call, [x, *params], fast_mode=True)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_gradgradcheck_cell_modules(device, kind):
    ours = rnnkit.from_torch(getattr(torch.nn, kind)(2, 3).double()).to(device)
    names = [n for n, _ in ours.named_parameters()]
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 2, generator=gen, dtype=F64)).to(device).requires_grad_()
    h = (torch.rand(1, 3, generator=gen, dtype=F64)).to(device).requires_grad_()
    c = (torch.rand(1, 3, generator=gen, dtype=F64)).to(device).requires_grad_()
    params = [p.detach().requires_grad_() for p in ours.parameters()]

    def call(x, h, c, *ps):
        states = (h, c) if kind == "LSTMCell" else h
        return torch.func.functional_call(ours, dict(zip(names, ps)), (x, states))

    assert torch.autograd.gradgradcheck(call, [x, h, c, *params], fast_mode=True)


# ---- gradient penalties against torch.nn --------------------------------------------------------
def _penalty_grads(module: torch.nn.Module, x: torch.Tensor, wrap, lstm: bool):
    """WGAN-GP style: g = d(sum y^2)/dx with create_graph, then the gradients of |g|^2 of x, of
    the initial states (derived from x, so that the two paths into x must not be counted twice)
    and of every parameter. Returns (g, second-order gradients)."""
    D = module.num_layers * (2 if module.bidirectional else 1)
    h0 = x[0, :, :1].expand(D, -1, module.proj_size or module.hidden_size) * 0.5
    hx = (h0, torch.tanh(x[-1, :, :1]).expand(D, -1, module.hidden_size)) if lstm else h0
    out, _ = module(wrap(x), hx)
    y = out.data if hasattr(out, "data") and not isinstance(out, torch.Tensor) else out
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    return g, torch.autograd.grad(g.pow(2).sum(), [x, *module.parameters()])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind, kwargs", [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"nonlinearity": "relu", "bias": False}),
], ids=["LSTM", "LSTM 2-layer bidirectional proj_size", "GRU 2-layer bidirectional",
        "RNN 2-layer bidirectional", "RNN relu no bias"])
def test_gradient_penalty_matches_torch_nn(kind, kwargs, packed):
    """The issue's case: a gradient penalty through the module, every second-order gradient
    equal to torch.nn's CPU path in float64, with torch's warning about operators without an
    autograd kernel turned into an error."""
    ours, theirs = _module_pair(kind, **kwargs)
    x, wrap = _input(packed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g_ours, second_ours = _penalty_grads(ours, x, wrap, kind == "LSTM")
    g_theirs, second_theirs = _penalty_grads(theirs, x, wrap, kind == "LSTM")
    torch.testing.assert_close(g_ours, g_theirs, rtol=TOL, atol=TOL)
    names = ["x"] + [n for n, _ in theirs.named_parameters()]
    for name, a, b in zip(names, second_ours, second_theirs):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_gradient_penalty_matches_torch_nn(kind):
    theirs = getattr(torch.nn, kind)(2, 3).double()
    ours = rnnkit.from_torch(theirs)
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 2, generator=gen, dtype=F64) * 2 - 1).requires_grad_()
    results = []
    for module in (ours, theirs):
        h = torch.tanh(x[:, :1]).expand(-1, 3)  # a state computed from the input
        state = (h, h * 0.5) if kind == "LSTMCell" else h
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = module(x, state)
            y = out[0] + out[1] if kind == "LSTMCell" else out
            (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
            results.append(torch.autograd.grad(g.pow(2).sum(), [x, *module.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_third_derivative_matches_torch_nn():
    """The recomputed first gradient is made of torch operations: every order is exact."""
    ours, theirs = _module_pair("GRU")
    results = []
    for module in (ours, theirs):
        x, _ = _input(packed=False, seed=4)
        (g,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gg.sum(), [x, *module.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


# ---- which backward runs ------------------------------------------------------------------------
def test_first_order_backward_stays_on_the_fused_kernels(monkeypatch):
    """Without create_graph the C++ backward runs; with it, the exact path (the padded LSTM's
    own second-order path is tested in test_lstm_second_order.py)."""
    calls = []
    exact = double_backward.backward
    monkeypatch.setattr(double_backward, "backward",
                        lambda *a: calls.append(a[0]) or exact(*a))
    ours, _ = _module_pair("GRU")
    x, _ = _input(packed=False)
    ours(x)[0].sum().backward()
    assert calls == []
    torch.autograd.grad(ours(x)[0].sum(), x, create_graph=True)
    assert calls == ["gru"]


def test_the_warning_this_file_turns_into_an_error_is_real(monkeypatch):
    """With the exact path switched off, the penalty tests above would see torch's warning, as an
    error: the C++ backward operators have no autograd kernel of their own."""
    monkeypatch.setattr(double_backward, "wanted", lambda grads, saved: False)
    ours, _ = _module_pair("GRU")
    x, wrap = _input(packed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="autograd kernel was not registered"):
            _penalty_grads(ours, x, wrap, lstm=False)


def test_backward_of_a_call_without_workspace_raises():
    """train=False keeps nothing for backward: differentiating it is refused, not computed
    wrongly, whatever the order."""
    gen = torch.Generator().manual_seed(0)
    x, h, c = _rand(gen, "cpu", 2, 1, 2), _rand(gen, "cpu", 1, 3), _rand(gen, "cpu", 1, 3)
    w_ih, w_hh = _rand(gen, "cpu", 12, 2), _rand(gen, "cpu", 12, 3)
    output = ops.lstm(x, None, h, c, w_ih, w_hh, None, None, None, False, False)[0]
    with pytest.raises(RuntimeError, match="train=False"):
        torch.autograd.grad(output.sum(), w_ih, create_graph=True)


# ---- forms that are not supported raise ---------------------------------------------------------
def _jvp(module, x):
    return torch.func.jvp(lambda t: module(t)[0], (x,), (torch.ones_like(x),))


def _dual(module, x):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        return module(fwAD.make_dual(x, torch.ones_like(x)))


def _func_grad_of_grad(module, x):
    f = lambda t: module(t)[0].pow(2).sum()  # noqa: E731
    return torch.func.grad(lambda t: torch.func.grad(f)(t).pow(2).sum())(x)


@pytest.mark.parametrize("how, match", [
    (_jvp, "no forward-mode derivative"),
    (_dual, "no forward-mode derivative"),
    (_func_grad_of_grad, "functorch transforms"),  # torch's own refusal
], ids=["torch.func.jvp", "forward_ad dual tensor", "torch.func.grad of grad"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_unsupported_derivatives_raise(kind, how, match):
    """torch.nn supports these; rnnkit refuses them with an error rather than dropping a tangent
    (without the check, torch runs the operator without autograd and the tangent is lost)."""
    ours = rnnkit.from_torch(getattr(torch.nn, kind)(2, 3).double())
    x = torch.rand((4, 1, 2) if "Cell" not in kind else (1, 2), dtype=F64)
    with pytest.raises(RuntimeError, match=match):
        how(ours, x)

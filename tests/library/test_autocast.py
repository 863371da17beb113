"""rnnkit under torch.autocast, and modules converted with .to(torch.bfloat16).

Under autocast(device, dtype) every forward operator casts its floating-point arguments (input,
states, weights, biases; not float64) to the autocast dtype and returns results in it, as
torch.nn.LSTM does on the CPU; rnnkit does so for its LSTM, GRU and RNN, modules, cells and
functional calls alike. Gradients flow back through the casts to float32 parameters in float32.

Accuracy follows the house rule for a low-precision dtype: against torch.nn in float64,
``max|rnnkit - ref64| <= 2 * max|peer - ref64| + floor``, the peer being torch.nn itself run in
that dtype (its module converted, its inputs cast: what autocast does), floor = eps * (1 +
max|ref64|) with eps the dtype's machine epsilon.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.functional as RF
from rnnkit.ops import AUTOCAST_DEVICES, AUTOCAST_OPERATORS

from ..helpers import tensors_of

LAYERS = ("LSTM", "GRU", "RNN")
CELLS = ("LSTMCell", "GRUCell", "RNNCell")
CUDA = pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in rnnkit.build_info()[
    "backends"], reason="needs a GPU and rnnkit's CUDA kernels")


def _modules(kind: str, *args, seed: int = 0, **kwargs):
    """(torch.nn module in float32, rnnkit's conversion) with the same random weights."""
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, kind)(*args, **kwargs)
    return theirs, rnnkit.from_torch(theirs)


def _to(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of a torch.nn module in dtype (the original stays as it is)."""
    copy = type(module)(**_init_args(module))
    copy.load_state_dict(module.state_dict())
    return copy.to(next(module.parameters()).device, dtype)


def _init_args(module: torch.nn.Module) -> dict:
    keys = ["input_size", "hidden_size", "bias"]
    if isinstance(module, torch.nn.RNNBase):
        keys += ["num_layers", "batch_first", "bidirectional"]
    args = {k: getattr(module, k) for k in keys}
    if isinstance(module, (torch.nn.RNN, torch.nn.RNNCell)):
        args["nonlinearity"] = module.nonlinearity
    return args


def _max_err(got: torch.Tensor, want64: torch.Tensor) -> float:
    return (got.double() - want64).abs().max().item()


def _assert_within_rule(got, peer, ref64, dtype, what):
    """The house rule for a low-precision result ``got`` (see the module docstring)."""
    floor = torch.finfo(dtype).eps * (1 + ref64.abs().max().item())
    ours, theirs = _max_err(got, ref64), _max_err(peer, ref64)
    assert ours <= 2 * theirs + floor, (
        f"{what}: rnnkit's error {ours:.3g} against float64 exceeds 2 x torch.nn's {dtype} "
        f"error {theirs:.3g} + floor {floor:.3g}")


def _layer_inputs(kind: str, T: int, N: int, I: int, H: int, states: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=g)
    if not states:
        return [x]
    h = torch.randn(1, N, H, generator=g)
    return [x, (h, torch.randn(1, N, H, generator=g))] if kind == "LSTM" else [x, h]


def _cell_inputs(kind: str, N: int, I: int, H: int):
    g = torch.Generator().manual_seed(2)
    x, h = torch.randn(N, I, generator=g), torch.randn(N, H, generator=g)
    return [x, (h, torch.randn(N, H, generator=g))] if kind == "LSTMCell" else [x, h]


def _grad_inputs(inputs):
    """inputs with every floating tensor a fresh leaf that requires grad."""
    def leaf(t):
        return t.detach().clone().requires_grad_()
    return [tuple(leaf(s) for s in a) if isinstance(a, tuple) else leaf(a) for a in inputs]


def _cast_nested(inputs, dtype):
    return [tuple(s.detach().to(dtype).requires_grad_() for s in a) if isinstance(a, tuple)
            else a.detach().to(dtype).requires_grad_() for a in inputs]


def _leaves(inputs):
    return [t for a in inputs for t in (a if isinstance(a, tuple) else (a,))]


# ---- registration -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", AUTOCAST_OPERATORS)
@pytest.mark.parametrize("device", AUTOCAST_DEVICES)
def test_every_forward_operator_has_an_autocast_kernel(name, device):
    key = "Autocast" + torch._C._dispatch_key_for_device(device)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnkit::{name}", key), (
        f"rnnkit::{name} has no {key} kernel")


def test_the_autocast_list_names_every_forward_operator():
    """Every rnnkit operator without _backward in its name is in AUTOCAST_OPERATORS."""
    forward = {name for name in dir(torch.ops.rnnkit) if not name.startswith("_")
               and not name.endswith("_backward")
               and isinstance(getattr(torch.ops.rnnkit, name), torch._ops.OpOverloadPacket)}
    assert forward == set(AUTOCAST_OPERATORS)


# ---- modules: results in the autocast dtype, as accurate as torch.nn's ------------------------
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("T,N,H,states", [(5, 3, 7, False), (1, 1, 3, True), (6, 20, 17, True)])
def test_layers_under_cpu_autocast(kind, T, N, H, states):
    theirs, ours = _modules(kind, 4, H)
    inputs = _layer_inputs(kind, T, N, 4, H, states)
    with torch.autocast("cpu", torch.bfloat16):
        got = tensors_of(ours(*inputs))
    assert [t.dtype for t in got] == [torch.bfloat16] * len(got)
    ref64 = tensors_of(_to(theirs, torch.float64)(*_cast_nested(inputs, torch.float64)))
    peer = tensors_of(_to(theirs, torch.bfloat16)(*_cast_nested(inputs, torch.bfloat16)))
    for k, (a, p, r) in enumerate(zip(got, peer, ref64)):
        _assert_within_rule(a, p, r, torch.bfloat16, f"{kind} output {k}")


def test_lstm_returns_what_torch_nn_lstm_returns_under_cpu_autocast():
    theirs, ours = _modules("LSTM", 4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", torch.bfloat16):
        want = tensors_of(theirs(x))
        got = tensors_of(ours(x))
    assert [t.dtype for t in got] == [t.dtype for t in want] == [torch.bfloat16] * 3
    assert [t.shape for t in got] == [t.shape for t in want]


@pytest.mark.parametrize("kind", LAYERS)
def test_packed_bidirectional_batch_first_under_cpu_autocast(kind):
    theirs, ours = _modules(kind, 4, 5, num_layers=2, bidirectional=True)
    padded = torch.randn(6, 4, 4)
    packed = pack_padded_sequence(padded, [6, 4, 3, 1])
    with torch.autocast("cpu", torch.bfloat16):
        got = tensors_of(ours(packed))
    assert [t.dtype for t in got] == [torch.bfloat16] * len(got)
    ref64 = tensors_of(_to(theirs, torch.float64)(pack_padded_sequence(padded.double(),
                                                                      [6, 4, 3, 1])))
    peer = tensors_of(_to(theirs, torch.bfloat16)(pack_padded_sequence(padded.bfloat16(),
                                                                      [6, 4, 3, 1])))
    for k, (a, p, r) in enumerate(zip(got, peer, ref64)):
        _assert_within_rule(a, p, r, torch.bfloat16, f"packed {kind} output {k}")


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("N,H", [(1, 1), (3, 17)])
def test_cells_under_cpu_autocast(kind, N, H):
    theirs, ours = _modules(kind, 4, H)
    inputs = _cell_inputs(kind, N, 4, H)
    with torch.autocast("cpu", torch.bfloat16):
        got = tensors_of(ours(*inputs))
        unbatched = tensors_of(ours(inputs[0][0]))
    assert [t.dtype for t in got + unbatched] == [torch.bfloat16] * (len(got) + len(unbatched))
    ref64 = tensors_of(_to(theirs, torch.float64)(*_cast_nested(inputs, torch.float64)))
    peer = tensors_of(_to(theirs, torch.bfloat16)(*_cast_nested(inputs, torch.bfloat16)))
    for k, (a, p, r) in enumerate(zip(got, peer, ref64)):
        _assert_within_rule(a, p, r, torch.bfloat16, f"{kind} output {k}")


def test_functional_calls_under_cpu_autocast():
    """The functional forms with float32 arguments return bfloat16 under autocast."""
    g = torch.Generator().manual_seed(3)
    N, I, H = 3, 4, 5
    x, h, c = (torch.randn(N, I, generator=g), torch.randn(N, H, generator=g),
               torch.randn(N, H, generator=g))

    def weights(gates):
        return [torch.randn(gates * H, I, generator=g), torch.randn(gates * H, H, generator=g),
                torch.randn(gates * H, generator=g), torch.randn(gates * H, generator=g)]

    w4, w3, w1 = weights(4), weights(3), weights(1)
    seq = torch.randn(6, N, I, generator=g)
    with torch.autocast("cpu", torch.bfloat16):
        results = [*RF.lstm_cell(x, (h, c), *w4), RF.gru_cell(x, h, *w3), RF.rnn_cell(x, h, *w1)]
        out, (hn, cn) = RF.lstm(seq, (h[None], c[None]), [(*w4, None)])
        results += [out, hn, cn]
        out, hn = RF.gru(seq, h[None], [(*w3, None)])
        results += [out, hn]
        out, hn = RF.rnn(seq, h[None], [(*w1, None)], nonlinearity="relu")
        results += [out, hn]
    assert [t.dtype for t in results] == [torch.bfloat16] * len(results)


def test_float64_is_not_cast_under_autocast():
    """torch's autocast leaves float64 alone; so does rnnkit."""
    theirs, ours = _modules("GRU", 4, 5)
    ours = ours.double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with torch.autocast("cpu", torch.bfloat16):
        out, h = ours(x)
    assert out.dtype == h.dtype == torch.float64
    torch.testing.assert_close(out, theirs.double()(x)[0], rtol=1e-10, atol=1e-10)


def test_mixed_dtypes_under_autocast_are_accepted():
    """A bfloat16 input (say from an autocast Linear) and float32 states into float32 modules."""
    _, lstm = _modules("LSTM", 4, 5)
    _, cell = _modules("GRUCell", 4, 5)
    x = torch.randn(3, 2, 4).bfloat16()
    states = (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5))
    with torch.autocast("cpu", torch.bfloat16):
        out, (h, c) = lstm(x, states)
        y = cell(x[0], torch.zeros(2, 5))
    assert out.dtype == h.dtype == c.dtype == y.dtype == torch.bfloat16


# ---- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_gradients_reach_float32_parameters_in_float32(kind):
    """Backward through autocast: every parameter's gradient is float32 (the parameters' dtype),
    the inputs' gradients float32 too, and all within the bfloat16 rule of float64's."""
    theirs, ours = _modules(kind, 4, 7, seed=4)
    cell = kind in CELLS
    inputs = _grad_inputs(_cell_inputs(kind, 3, 4, 7) if cell else
                          _layer_inputs(kind, 5, 3, 4, 7, states=True))
    with torch.autocast("cpu", torch.bfloat16):
        outs = tensors_of(ours(*inputs))
    g = torch.Generator().manual_seed(5)
    seeds = [torch.randn(o.shape, generator=g) for o in outs]
    loss = sum((o.float() * s).sum() for o, s in zip(outs, seeds))
    leaves = _leaves(inputs) + list(ours.parameters())
    got = torch.autograd.grad(loss, leaves)
    assert [t.dtype for t in got] == [torch.float32] * len(got)

    def grads(module, dtype):
        xs = _cast_nested(inputs, dtype)
        o = tensors_of(module(*xs))
        total = sum((a * s.to(dtype)).sum() for a, s in zip(o, seeds))
        return torch.autograd.grad(total, _leaves(xs) + list(module.parameters()))

    ref64 = grads(_to(theirs, torch.float64), torch.float64)
    peer = grads(_to(theirs, torch.bfloat16), torch.bfloat16)
    names = [f"input {k}" for k in range(len(_leaves(inputs)))] + [
        n for n, _ in ours.named_parameters()]
    for name, a, p, r in zip(names, got, peer, ref64):
        _assert_within_rule(a, p, r, torch.bfloat16, f"{kind}: gradient of {name}")


# ---- modules converted to bfloat16 ------------------------------------------------------------
@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_modules_converted_to_bfloat16(kind):
    theirs, ours = _modules(kind, 4, 6, seed=6)
    ours = ours.to(torch.bfloat16)
    cell = kind in CELLS
    inputs = _cell_inputs(kind, 3, 4, 6) if cell else _layer_inputs(kind, 5, 3, 4, 6, True)
    xs = _cast_nested(inputs, torch.bfloat16)
    outs = tensors_of(ours(*xs))
    assert [t.dtype for t in outs] == [torch.bfloat16] * len(outs)
    grads = torch.autograd.grad(sum(o.float().sum() for o in outs),
                                _leaves(xs) + list(ours.parameters()))
    assert [t.dtype for t in grads] == [torch.bfloat16] * len(grads)
    ref64 = tensors_of(_to(theirs, torch.float64)(*_cast_nested(inputs, torch.float64)))
    peer = tensors_of(_to(theirs, torch.bfloat16)(*_cast_nested(inputs, torch.bfloat16)))
    for k, (a, p, r) in enumerate(zip(outs, peer, ref64)):
        _assert_within_rule(a, p, r, torch.bfloat16, f"bfloat16 {kind} output {k}")


@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_mismatched_dtypes_outside_autocast_get_torch_nn_errors(kind):
    """Outside autocast a bfloat16 input into a float32 module is torch.nn's error, as before."""
    theirs, ours = _modules(kind, 4, 5)
    x = (torch.randn(3, 2, 4) if kind == "LSTM" else torch.randn(2, 4)).bfloat16()
    with pytest.raises(Exception) as want:
        theirs(x)
    with pytest.raises(type(want.value)) as got:
        ours(x)
    head = "RNN input dtype" if kind == "LSTM" else "Input and parameter tensors are not the same"
    assert head in str(got.value)


def test_integer_input_under_autocast_is_still_refused():
    _, ours = _modules("LSTM", 4, 5)
    with torch.autocast("cpu", torch.bfloat16), pytest.raises(ValueError, match="floating-point"):
        ours(torch.zeros(3, 2, 4, dtype=torch.long))


# ---- torch.compile and torch.export -----------------------------------------------------------
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_under_autocast_matches_eager(backend):
    """torch.compile(fullgraph=True) of a model that enters autocast itself, the LSTM fed by an
    autocast Linear (a bfloat16 input into float32 weights): no graph break, the eager results
    and gradients (float32, on float32 parameters). Inductor compiles C++ (about 30 s on a busy
    2-core machine)."""
    torch.manual_seed(7)
    linear, lstm, gru = torch.nn.Linear(4, 4), rnnkit.LSTM(4, 6), rnnkit.GRUCell(6, 6)

    def run(x):
        with torch.autocast("cpu", torch.bfloat16):
            y, (h, c) = lstm(linear(x))
            return gru(y[-1], h[0]), c

    x = torch.randn(5, 3, 4, requires_grad=True)
    eager = run(x)
    compiled = torch.compile(run, fullgraph=True, backend=backend)(x)
    assert [t.dtype for t in compiled] == [torch.bfloat16] * 2
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
    params = [x, *linear.parameters(), *lstm.parameters(), *gru.parameters()]
    ga = torch.autograd.grad(sum(t.float().sum() for t in compiled), params)
    gb = torch.autograd.grad(sum(t.float().sum() for t in eager), params)
    for a, b in zip(ga, gb):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_export_under_autocast_casts_into_the_operators():
    """torch.export keeps the autocast region; decomposed, the rnnkit nodes take and give
    bfloat16, with casts of the float32 parameters before them (no kernel runs: fake tensors)."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.cell = rnnkit.LSTM(4, 6), rnnkit.RNNCell(6, 6)

        def forward(self, x):
            with torch.autocast("cpu", torch.bfloat16):
                y, _ = self.lstm(x)
                return self.cell(y[-1])

    program = torch.export.export(Model(), (torch.randn(5, 3, 4),)).run_decompositions()
    nodes = [n for n in program.graph.nodes if str(n.target).startswith("rnnkit.")]
    assert [str(n.target) for n in nodes] == ["rnnkit.lstm.default", "rnnkit.rnn_cell.default"]
    for n in nodes:
        val = n.meta["val"]
        assert (val[0] if isinstance(val, (tuple, list)) else val).dtype == torch.bfloat16
        weight = n.args[4] if n.target is torch.ops.rnnkit.lstm.default else n.args[2]
        assert weight.meta["val"].dtype == torch.bfloat16, f"{n.target}: weight not cast"


# ---- float16 and CUDA -------------------------------------------------------------------------
def test_cpu_autocast_to_float16():
    theirs, ours = _modules("LSTM", 4, 5)
    x = torch.randn(4, 2, 4)
    with torch.autocast("cpu", torch.float16):
        got = tensors_of(ours(x))
    assert [t.dtype for t in got] == [torch.float16] * 3
    ref64 = tensors_of(_to(theirs, torch.float64)(x.double()))
    peer = tensors_of(_to(theirs, torch.float16)(x.half()))
    for k, (a, p, r) in enumerate(zip(got, peer, ref64)):
        _assert_within_rule(a, p, r, torch.float16, f"float16 LSTM output {k}")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", LAYERS + CELLS)
def test_cuda_autocast(kind, dtype):
    """The same registration on CUDA: results in the autocast dtype, within its rule, and
    float32 gradients on float32 parameters."""
    theirs, ours = _modules(kind, 4, 7, seed=8)
    theirs, ours = theirs.cuda(), ours.cuda()
    cell = kind in CELLS
    inputs = _cell_inputs(kind, 3, 4, 7) if cell else _layer_inputs(kind, 5, 3, 4, 7, True)
    inputs = [tuple(s.cuda() for s in a) if isinstance(a, tuple) else a.cuda() for a in inputs]
    with torch.autocast("cuda", dtype):
        got = tensors_of(ours(*inputs))
    assert [t.dtype for t in got] == [dtype] * len(got)
    grads = torch.autograd.grad(sum(o.float().sum() for o in got), list(ours.parameters()))
    assert [t.dtype for t in grads] == [torch.float32] * len(grads)
    ref64 = tensors_of(_to(theirs, torch.float64)(*_cast_nested(inputs, torch.float64)))
    peer = tensors_of(_to(theirs, dtype)(*_cast_nested(inputs, dtype)))
    for k, (a, p, r) in enumerate(zip(got, peer, ref64)):
        _assert_within_rule(a, p, r, dtype, f"CUDA {kind} output {k}")

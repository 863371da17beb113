"""The layer-normalised LSTM and GRU (haste's formulation): torch.ops.rnnkit.layernorm_lstm and
layernorm_gru, rnnkit.layernorm_functional and the modules of rnnkit.layernorm, against
rnnkit.reference's loop written from the equations, in float64: values, final states and
gradients of the input, the states and every parameter (layer-norm gains and shifts included),
padded and packed, both directions, stacks, T = 1, N = 1, odd H, both CPU paths (small batch
fused, BLAS) and the inference chunks; gradcheck, opcheck, torch.compile, errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import rnnkit
from rnnkit import layernorm_functional as LF
from rnnkit import reference as R

from ..conftest import ALL_DEVICES

ops = torch.ops.rnnkit
F64 = torch.float64
GATES = {"lstm": 4, "gru": 3}
LAYERS = {"lstm": (LF.layernorm_lstm_layer, R.layernorm_lstm_layer),
          "gru": (LF.layernorm_gru_layer, R.layernorm_gru_layer)}


def _params(cell: str, I: int, H: int, bias: bool, gen: torch.Generator):
    """(w_ih, w_hh, b_ih, b_hh, norm) with gains away from one and shifts away from zero, so that
    a kernel that drops a norm parameter fails."""
    G = GATES[cell] * H
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    b = (rand(G) * 0.5, rand(G) * 0.5) if bias else (None, None)
    norm = (1 + 0.3 * rand(G), 1 + 0.3 * rand(G))
    if cell == "lstm":
        norm += (1 + 0.3 * rand(H), 0.3 * rand(H))
    return (rand(G, I) * 0.5, rand(G, H) * 0.5, *b, norm)


def _states(cell: str, N: int, H: int, gen: torch.Generator):
    count = 2 if cell == "lstm" else 1
    return tuple(torch.randn(N, H, generator=gen, dtype=F64) for _ in range(count))


def _packed(T: int, N: int, I: int, gen: torch.Generator):
    """A packed sequence of N lengths from T down to 1 (sorted): data (P, I), batch_sizes (T,)."""
    lengths = torch.linspace(T, 1, N).round().long().clamp(min=1)
    lengths[0] = T
    x = torch.randn(T, N, I, generator=gen, dtype=F64)
    p = pack_padded_sequence(x, lengths, enforce_sorted=True)
    return p.data, p.batch_sizes


def _flat(params, states):
    return [*states, *(t for t in params[:4] if t is not None), *params[4]]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("H", [1, 3, 17])
@pytest.mark.parametrize("N", [1, 2, 20])  # the small-batch fused path (<= 16) and BLAS
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_values_and_gradients_match_reference(cell, H, N, packed, reverse):
    gen = torch.Generator().manual_seed(H * 100 + N)
    T, I = 5, 4
    params = _params(cell, I, H, bias=(H != 1), gen=gen)
    states = _states(cell, N, H, gen)
    if packed:
        x, batch_sizes = _packed(T, N, I, gen)
    else:
        x, batch_sizes = torch.randn(T, N, I, generator=gen, dtype=F64), None
    ours_fn, ref_fn = LAYERS[cell]
    leaves = [x, *_flat(params, states)]
    results = []
    for fn in (ours_fn, ref_fn):
        copies = [t.detach().clone().requires_grad_() for t in leaves]
        xs, rest = copies[0], copies[1:]
        k = len(states)
        st, flat_p = tuple(rest[:k]), rest[k:]
        p4 = list(params[:4])
        it = iter(flat_p)
        p4 = [next(it) if t is not None else None for t in p4]
        norm = tuple(it)
        out, finals = fn(xs, batch_sizes, st, (*p4, norm), reverse)
        loss = (out * torch.cos(out)).sum() + sum((f * f).sum() for f in finals)
        grads = torch.autograd.grad(loss, copies)
        results.append((out, finals, grads))
    (o1, f1, g1), (o2, f2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_layer_operator(cell, packed, reverse):
    gen = torch.Generator().manual_seed(7)
    T, N, I, H = 3, 3, 2, 3
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    x, batch_sizes = _packed(T, N, I, gen) if packed else (
        torch.randn(T, N, I, generator=gen, dtype=F64), None)
    k = len(states)

    def f(x, *rest):
        st, p = rest[:k], rest[k:]
        out, finals = LAYERS[cell][0](x, batch_sizes, st, (*p[:4], tuple(p[4:])), reverse)
        return out, *finals

    leaves = [t.clone().requires_grad_() for t in [x, *_flat(params, states)]]
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_call_equals_training_call(cell):
    """train=False runs the inference chunks (no workspace): same output and states."""
    gen = torch.Generator().manual_seed(3)
    T, N, I, H = 40, 5, 4, 9
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    x = torch.randn(T, N, I, generator=gen, dtype=F64)
    c0 = states[1] if cell == "lstm" else None
    op = getattr(ops, f"layernorm_{cell}")
    args = (x, None, states[0], c0, *params[:4], torch.cat(params[4]), False)
    trained, inferred = op(*args, True), op(*args, False)
    for a, b in zip(trained[:3], inferred[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert inferred[3].shape == (0,)


@pytest.mark.parametrize("cls,cell", [(rnnkit.LayerNormLSTM, "lstm"),
                                      (rnnkit.LayerNormGRU, "gru")])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_module_stack_matches_reference(cls, cell, bidirectional):
    """Two layers, batch_first, every parameter's gradient against the reference's."""
    torch.manual_seed(0)
    m = cls(4, 5, num_layers=2, bidirectional=bidirectional, batch_first=True, dtype=F64)
    with torch.no_grad():  # away from the identity init, so that a dropped gain shows
        for name, p in m.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 6, 4, dtype=F64)
    D = 2 if bidirectional else 1
    h0 = torch.randn(2 * D, 3, 5, dtype=F64)
    c0 = torch.randn(2 * D, 3, 5, dtype=F64)
    if cell == "lstm":
        out, (h, c) = m(x, (h0, c0))
        ref_out, (ref_h, ref_c) = R.layernorm_lstm(x.transpose(0, 1), (h0, c0), m._layer_params(),
                                                   2, bidirectional)
        finals, ref_finals = (h, c), (ref_h, ref_c)
    else:
        out, h = m(x, h0)
        ref_out, ref_h = R.layernorm_gru(x.transpose(0, 1), h0, m._layer_params(), 2,
                                         bidirectional)
        finals, ref_finals = (h,), (ref_h,)
    torch.testing.assert_close(out, ref_out.transpose(0, 1), rtol=1e-10, atol=1e-10)
    for a, b in zip(finals, ref_finals):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    names = [n for n, _ in m.named_parameters()]
    assert sum(n.startswith("layer_norm_") for n in names) == 2 * D * (4 if cell == "lstm" else 2)
    params = list(m.parameters())
    ours = torch.autograd.grad(out.sum() + finals[0].sum(), params)
    theirs = torch.autograd.grad(ref_out.sum() + ref_finals[0].sum(), params)
    for name, a, b in zip(names, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("cls", [rnnkit.LayerNormLSTM, rnnkit.LayerNormGRU])
def test_module_packed_unsorted_and_unbatched(cls):
    torch.manual_seed(1)
    m = cls(3, 4, dtype=F64)
    seqs = [torch.randn(n, 3, dtype=F64) for n in (2, 5, 1, 3)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    out, finals = m(packed)
    h_n = finals[0] if isinstance(finals, tuple) else finals  # (1, N, H) in the caller's order
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    for k, s in enumerate(seqs):  # each sequence alone, unbatched (L, H_in)
        alone, alone_finals = m(s)
        alone_h = alone_finals[0] if isinstance(alone_finals, tuple) else alone_finals
        torch.testing.assert_close(padded[: lengths[k], k], alone, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h_n[:, k], alone_h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,ref_cell", [(rnnkit.LayerNormLSTMCell, R.layernorm_lstm_cell),
                                          (rnnkit.LayerNormGRUCell, R.layernorm_gru_cell)])
@pytest.mark.parametrize("N", [1, 4])
def test_cells_match_reference(cls, ref_cell, N):
    torch.manual_seed(2)
    cell = cls(3, 5, dtype=F64)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(N, 3, dtype=F64)
    lstm = cls is rnnkit.LayerNormLSTMCell
    states = tuple(torch.randn(N, 5, dtype=F64) for _ in range(2 if lstm else 1))
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, cell._norm())
    got = cell(x, states if lstm else states[0])
    want = ref_cell(x, *states, *weights)
    got, want = (got, want) if lstm else ((got,), (want,))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    params = list(cell.parameters())
    ga = torch.autograd.grad(sum(g.sum() for g in got), params)
    gb = torch.autograd.grad(sum(w.sum() for w in want), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    single = cell(x[0], tuple(s[0] for s in states) if lstm else states[0][0])
    first = single[0] if lstm else single
    torch.testing.assert_close(first, got[0][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck(cell, packed):
    gen = torch.Generator().manual_seed(5)
    T, N, I, H = 3, 3, 2, 4
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    x, batch_sizes = _packed(T, N, I, gen) if packed else (
        torch.randn(T, N, I, generator=gen, dtype=F64), None)
    c0 = states[1].requires_grad_() if cell == "lstm" else None
    args = (x.requires_grad_(), batch_sizes, states[0].requires_grad_(), c0,
            *(t.requires_grad_() for t in params[:4]), torch.cat(params[4]).requires_grad_(),
            True)
    torch.library.opcheck(getattr(ops, f"layernorm_{cell}"), args)


@pytest.mark.parametrize("cls", [rnnkit.LayerNormLSTM, rnnkit.LayerNormGRU])
def test_torch_compile_fullgraph(cls):
    torch.manual_seed(3)
    m = cls(4, 6)
    x = torch.randn(5, 2, 4, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    eager_out, got_out = m(x)[0], compiled(x)[0]
    torch.testing.assert_close(got_out, eager_out)
    ga = torch.autograd.grad(got_out.sum(), [x, *m.parameters()])
    gb = torch.autograd.grad(eager_out.sum(), [x, *m.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls,theirs", [(rnnkit.LayerNormLSTM, torch.nn.LSTM),
                                        (rnnkit.LayerNormGRU, torch.nn.GRU)])
def test_from_torch_copies_weights_with_identity_norms(cls, theirs):
    source = theirs(3, 4, num_layers=2, bidirectional=True)
    m = cls.from_torch(source)
    ours = dict(m.named_parameters())
    for name, p in source.named_parameters():
        torch.testing.assert_close(ours[name], p, rtol=0, atol=0)
    for name, p in ours.items():
        if name.startswith("layer_norm_"):
            assert torch.all(p == (0.0 if "c_bias" in name else 1.0)), name
    with pytest.raises(TypeError, match="expected a torch.nn"):
        cls.from_torch(torch.nn.RNN(3, 4))


def test_cell_from_torch():
    source = torch.nn.LSTMCell(3, 4)
    cell = rnnkit.LayerNormLSTMCell.from_torch(source)
    torch.testing.assert_close(cell.weight_hh, source.weight_hh, rtol=0, atol=0)
    assert torch.all(cell.layer_norm_ih_weight == 1)
    with pytest.raises(TypeError, match="expected a torch.nn.GRUCell"):
        rnnkit.LayerNormGRUCell.from_torch(source)


def test_proj_size_is_refused():
    with pytest.raises(ValueError, match="proj_size is not supported"):
        rnnkit.LayerNormLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size is not supported"):
        rnnkit.LayerNormGRU(3, 4, proj_size=0)
    with pytest.raises(ValueError, match="proj_size is not supported"):
        rnnkit.LayerNormLSTM.from_torch(torch.nn.LSTM(3, 4, proj_size=2))


def test_bad_input_errors_name_expected_and_got():
    m = rnnkit.LayerNormLSTM(3, 4)
    with pytest.raises(RuntimeError, match="Expected 3, got 5"):
        m(torch.randn(2, 1, 5))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 1, 4\)"):
        m(torch.randn(2, 1, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 1, 4)))
    gen = torch.Generator().manual_seed(0)
    params = _params("lstm", 3, 4, True, gen)
    x, h0, c0 = torch.randn(2, 1, 3, dtype=F64), torch.zeros(1, 4, dtype=F64), torch.zeros(1, 4,
                                                                                          dtype=F64)
    with pytest.raises(RuntimeError, match=r"expected norm \(the norm parameters\) of shape "
                                           r"\[40\], got \[39\]"):
        ops.layernorm_lstm(x, None, h0, c0, *params[:4], torch.cat(params[4])[:-1], False)
    with pytest.raises(RuntimeError, match="expected c0 \\(N, H\\), the initial cell state, got None"):
        ops.layernorm_lstm(x, None, h0, None, *params[:4], torch.cat(params[4]), False)
    gru = _params("gru", 3, 4, True, gen)
    with pytest.raises(RuntimeError, match="expected c0 None"):
        ops.layernorm_gru(x, None, h0, c0, *gru[:4], torch.cat(gru[4]), False)



def _run_layer(fn, cell, x, batch_sizes, leaves, reverse):
    """fn's output, final states and the gradients of a loss wrt leaves ([*states, *weights])."""
    k = 2 if cell == "lstm" else 1
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    xs = x.detach().clone().requires_grad_()
    st, rest = tuple(copies[:k]), copies[k:]
    params = (*rest[:4], tuple(rest[4:]))
    out, finals = fn(xs, batch_sizes, st, params, reverse)
    loss = (out * torch.cos(out.double()).to(out.dtype)).sum() + sum(f.sum() for f in finals)
    grads = torch.autograd.grad(loss, [xs, *copies])
    return [out, *finals, *grads]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("N", [3, 19])  # the CPU's small-batch fused path (<= 16) and BLAS
def test_device_and_dtype_against_float64_reference(device, cell, dtype, packed, N):
    """Each backend in each dtype it takes: values, states and every gradient, within twice the
    reference's own error in that dtype (plus a floor), against the float64 reference. bfloat16
    and float16 on the CPU are stored as they come and computed in float32, as the plain cells."""
    gen = torch.Generator().manual_seed(11)
    T, I, H = 6, 5, 33
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    x, batch_sizes = _packed(T, N, I, gen) if packed else (
        torch.randn(T, N, I, generator=gen, dtype=F64), None)
    leaves = [*states, *params[:4], *params[4]]
    ours_fn, ref_fn = LAYERS[cell]
    exact = _run_layer(ref_fn, cell, x, batch_sizes, leaves, False)
    to = lambda t: t.to(device=device, dtype=dtype)
    ref_low = _run_layer(ref_fn, cell, to(x), batch_sizes, [to(t) for t in leaves], False)
    ours = _run_layer(ours_fn, cell, to(x), batch_sizes, [to(t) for t in leaves], False)
    floor = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2,
             torch.float16: 3e-3}[dtype]
    for k, (a, r, e) in enumerate(zip(ours, ref_low, exact)):
        assert a.device.type == torch.device(device).type and a.dtype == dtype
        ours_err = (a.double().cpu() - e).abs().max().item()
        ref_err = (r.double().cpu() - e).abs().max().item()
        scale = 1 + e.abs().max().item()
        assert ours_err <= 2 * ref_err + floor * scale, (k, ours_err, ref_err)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_opcheck_on_device(device, cell):
    gen = torch.Generator().manual_seed(13)
    T, N, I, H = 3, 3, 2, 5
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    to = lambda t: t.to(device).requires_grad_()
    c0 = to(states[1]) if cell == "lstm" else None
    args = (to(torch.randn(T, N, I, generator=gen, dtype=F64)), None, to(states[0]), c0,
            *(to(t) for t in params[:4]), to(torch.cat(params[4])), True)
    torch.library.opcheck(getattr(ops, f"layernorm_{cell}"), args)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_dtypes_on_cpu_keep_a_float32_workspace(cell, dtype):
    """bfloat16 and float16 on the CPU: outputs and gradients in the input's dtype, the workspace
    in float32 (the kernels' compute dtype), which the fakes report too; opcheck passes."""
    gen = torch.Generator().manual_seed(17)
    T, N, I, H = 3, 2, 3, 5
    params = _params(cell, I, H, True, gen)
    states = _states(cell, N, H, gen)
    to = lambda t: t.to(dtype).requires_grad_()
    c0 = to(states[1]) if cell == "lstm" else None
    args = (to(torch.randn(T, N, I, generator=gen, dtype=F64)), None, to(states[0]), c0,
            *(to(t) for t in params[:4]), to(torch.cat(params[4])), False, True)
    op = getattr(ops, f"layernorm_{cell}")
    out, h, c, ws = op(*args)
    assert (out.dtype, h.dtype, ws.dtype) == (dtype, dtype, torch.float32)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    assert [(f.dtype, f.shape) for f in fake] == [(t.dtype, t.shape) for t in (out, h, c, ws)]
    grads = torch.autograd.grad(out.float().sum(), [a for a in args if isinstance(a, torch.Tensor)
                                                    and a.requires_grad])
    assert all(g.dtype == dtype for g in grads)
    torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("cls,cell", [(rnnkit.LayerNormLSTM, "lstm"), (rnnkit.LayerNormGRU, "gru")])
def test_module_under_cpu_autocast(cls, cell):
    """Under torch.autocast("cpu", bfloat16) a float32 module runs in bfloat16 (the operators'
    autocast kernels, rnnkit/ops.py): output in bfloat16 within the bfloat16 rule against the
    float64 reference, gradients in float32 on the float32 parameters."""
    torch.manual_seed(5)
    m = cls(4, 9)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", torch.bfloat16):
        out = m(x)[0]
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    layer = LAYERS[cell][1]
    norms = [base for base, _ in rnnkit.layernorm._NORMS[cell.upper()]]

    def run(dtype):  # the reference loop on the module's parameters in dtype
        get = lambda name: getattr(m, f"{name}_l0").detach().to(dtype)
        params = (*(get(b) for b in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                  tuple(get(b) for b in norms))
        states = tuple(torch.zeros(3, 9, dtype=dtype) for _ in range(2 if cell == "lstm" else 1))
        return layer(x.to(dtype), None, states, params, False)[0]

    ref64, peer = run(F64), run(torch.bfloat16)
    ours_err = (out.double() - ref64).abs().max().item()
    peer_err = (peer.double() - ref64).abs().max().item()
    floor = torch.finfo(torch.bfloat16).eps * (1 + ref64.abs().max().item())
    assert ours_err <= 2 * peer_err + floor, (ours_err, peer_err)

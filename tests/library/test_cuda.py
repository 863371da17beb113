"""The CUDA backend beyond the float64 operator checks of test_ops.py (which already run every
operator on CUDA: values, gradients, gradcheck, opcheck).

Here: half and bfloat16 against a float64 reference with a dtype-relative bound, awkward shapes,
packed input with batch sizes on the GPU, parity with torch.nn (cuDNN), torch.compile, CUDA graph
capture and replay, and device errors. Every test skips with a reason when the CUDA kernels were
not built or no GPU is visible.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import functional as F
from rnnkit import reference as R

from ..conftest import device_param

CUDA = [device_param("cuda")]
LOW = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _general_loop(monkeypatch):
    """These tests mean the general CUDA loop (a product and a pointwise launch per step); the
    default, RNNKIT_CUDA_PERSISTENT=auto, would take the persistent loop at small half-precision
    batches (tests/library/test_persistent_cuda.py tests that loop)."""
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "0")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, device="cuda", scale=1.0):
    return ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(device)


def _lengths_to_batch_sizes(lengths: list[int]) -> torch.Tensor:
    T = max(lengths)
    return torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)], dtype=torch.long)


# ---- one layer / cell problem, in any dtype -------------------------------------------------
def _layer_problem(kind: str, T: int, N: int, I: int, H: int, seed: int, packed: bool = False,
                   reverse: bool = False, proj: int = 0, device: str = "cuda"):
    """float64 tensors (x, batch_sizes, states, params) and the layer functions (ours, reference)."""
    gen = _gen(seed)
    if packed:
        lengths = sorted(torch.randint(1, T + 1, (N,), generator=gen).tolist(), reverse=True)
        lengths[0] = T
        bs = _lengths_to_batch_sizes(lengths)
        x = _rand(gen, int(bs.sum()), I, device=device)
    else:
        bs = None
        x = _rand(gen, T, N, I, device=device)
    G = {"lstm": 4, "gru": 3, "tanh": 1, "relu": 1}[kind]
    Rr = proj or H
    k = H**-0.5
    params = (_rand(gen, G * H, I, device=device, scale=k), _rand(gen, G * H, Rr, device=device, scale=k),
              _rand(gen, G * H, device=device, scale=k), _rand(gen, G * H, device=device, scale=k),
              _rand(gen, Rr, H, device=device, scale=k) if proj else None)
    states = (_rand(gen, N, Rr, device=device),) + ((_rand(gen, N, H, device=device),) if kind == "lstm" else ())
    if kind == "lstm":
        fns = (F.lstm_layer, R.lstm_layer)
    elif kind == "gru":
        fns = (F.gru_layer, R.gru_layer)
    else:
        fns = (F.rnn_layer(kind), R.rnn_layer(kind))
    return (x, bs, states, params, reverse), fns


def _cast(args, dtype, grad=True):
    """args with every float tensor cast to dtype and made a leaf that requires grad."""
    def one(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.detach().to(dtype).requires_grad_(grad)
        return t
    x, bs, states, params, reverse = args
    return (one(x), bs, tuple(one(s) for s in states), tuple(one(p) for p in params), reverse)


def _leaves(args):
    x, _, states, params, _ = args
    return [x, *states, *[p for p in params if p is not None]]


def _run(fn, args, seeds=None):
    """Outputs (output and final states) and the gradients of every leaf for given output seeds."""
    out, states = fn(*args)
    outs = [out, *states]
    if seeds is None:
        gen = _gen(7)
        seeds = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    grads = torch.autograd.grad(outs, _leaves(args), [s.to(o.device, o.dtype) for s, o in zip(seeds, outs)],
                                allow_unused=True)
    return [o.detach().double() for o in outs], [g.double() if g is not None else None for g in grads], seeds


def _assert_dtype_bound(ours, ref_dt, ref64, dtype, what):
    """max|ours - ref64| <= 2 * max|ref_in_dtype - ref64| + floor, tensor by tensor."""
    floor = 8 * torch.finfo(dtype).eps
    for k, (a, b, c) in enumerate(zip(ours, ref_dt, ref64)):
        if c is None:
            continue
        err = (a - c).abs().max().item() if a.numel() else 0.0
        ref_err = (b - c).abs().max().item() if b.numel() else 0.0
        scale = max(1.0, c.abs().max().item() if c.numel() else 0.0)
        bound = 2 * ref_err + floor * scale
        assert err <= bound, f"{what} {k}: error {err:.3g} > bound {bound:.3g} (reference in {dtype}: {ref_err:.3g})"


# ---- half and bfloat16 ----------------------------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", LOW, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("config", ["padded", "packed-reverse", "proj"])
def test_low_precision_layer_within_dtype_bound(device, dtype, kind, config):
    if config == "proj" and kind != "lstm":
        pytest.skip("proj_size is an LSTM option")
    args64, (ours_fn, ref_fn) = _layer_problem(
        kind, T=12, N=5, I=24, H=33, seed=11, packed=config == "packed-reverse",
        reverse=config == "packed-reverse", proj=16 if config == "proj" else 0, device=device)
    ref64, gref64, seeds = _run(ref_fn, _cast(args64, torch.float64))
    ref_dt, gref_dt, _ = _run(ref_fn, _cast(args64, dtype), seeds)
    ours, gours, _ = _run(ours_fn, _cast(args64, dtype), seeds)
    for o in ours:
        assert torch.isfinite(o).all()
    _assert_dtype_bound(ours, ref_dt, ref64, dtype, "output")
    _assert_dtype_bound(gours, gref_dt, gref64, dtype, "gradient")


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", LOW, ids=["float16", "bfloat16"])
def test_low_precision_cells_within_dtype_bound(device, dtype):
    gen = _gen(3)
    N, I, H = 6, 10, 17
    x, h, c = _rand(gen, N, I), _rand(gen, N, H), _rand(gen, N, H)
    k = H**-0.5
    w = {G: (_rand(gen, G * H, I, scale=k), _rand(gen, G * H, H, scale=k), _rand(gen, G * H, scale=k),
             _rand(gen, G * H, scale=k)) for G in (1, 3, 4)}
    problems = [
        (lambda x, h, c, *p: F.lstm_cell(x, (h, c), *p), lambda *a: R.lstm_cell(*a), (x, h, c, *w[4])),
        (lambda *a: (F.gru_cell(*a),), lambda *a: (R.gru_cell(*a),), (x, h, *w[3])),
        (lambda *a: (F.rnn_cell(*a, "tanh"),), lambda *a: (R.rnn_cell(*a, "tanh"),), (x, h, *w[1])),
    ]
    for ours_fn, ref_fn, args in problems:
        def run(fn, dt):
            leaves = [a.detach().to(dt).requires_grad_() for a in args]
            outs = fn(*leaves)
            gen2 = _gen(5)
            seeds = [torch.randn(o.shape, generator=gen2, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
            grads = torch.autograd.grad(outs, leaves, seeds)
            return [o.detach().double() for o in outs], [g.double() for g in grads]
        o64, g64 = run(ref_fn, torch.float64)
        odt, gdt = run(ref_fn, dtype)
        ours, gours = run(ours_fn, dtype)
        _assert_dtype_bound(ours, odt, o64, dtype, "cell output")
        _assert_dtype_bound(gours, gdt, g64, dtype, "cell gradient")


# ---- float64 values and gradients on awkward shapes ----------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("T, N, H", [(1, 1, 1), (1, 4, 3), (5, 1, 17), (7, 3, 129), (3, 2, 1)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_awkward_shapes_match_reference(device, kind, T, N, H, packed):
    for reverse in (False, True):
        args, (ours_fn, ref_fn) = _layer_problem(kind, T, N, 5, H, seed=T * 100 + N * 10 + H,
                                                 packed=packed, reverse=reverse, device=device)
        ref, gref, seeds = _run(ref_fn, _cast(args, torch.float64))
        ours, gours, _ = _run(ours_fn, _cast(args, torch.float64), seeds)
        for a, b in zip(ours + gours, ref + gref):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_float32_matches_float64_reference(device, kind):
    args, (ours_fn, ref_fn) = _layer_problem(kind, T=50, N=8, I=64, H=96, seed=5, device=device)
    ref, gref, seeds = _run(ref_fn, _cast(args, torch.float64))
    ours, gours, _ = _run(ours_fn, _cast(args, torch.float32), seeds)
    for a, b in zip(ours + gours, ref + gref):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---- packed sequences, lengths on the GPU ---------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_packed_batch_sizes_on_gpu(device, kind):
    args, (ours_fn, ref_fn) = _layer_problem(kind, T=9, N=6, I=7, H=11, seed=21, packed=True,
                                             device=device)
    x, bs, states, params, reverse = args
    on_gpu = (x, bs.to(device), states, params, reverse)
    a, ga, seeds = _run(ours_fn, _cast(on_gpu, torch.float64))
    b, gb, _ = _run(ours_fn, _cast(args, torch.float64), seeds)
    r, gr, _ = _run(ref_fn, _cast(args, torch.float64), seeds)
    for u, v, w in zip(a + ga, b + gb, r + gr):
        if w is not None:
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_modules_match_torch_nn_on_gpu(device, mode):
    """rnnkit modules on CUDA equal torch.nn (cuDNN) in float64, packed and bidirectional."""
    torch.manual_seed(0)
    kwargs = dict(input_size=6, hidden_size=9, num_layers=2, bidirectional=True)
    theirs = getattr(torch.nn, mode)(**kwargs).to(device, torch.float64)
    ours = rnnkit.from_torch(theirs)
    lengths = [7, 5, 5, 2]
    x = torch.randn(7, 4, 6, dtype=torch.float64, device=device)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=True)
    for inp in (x, packed):
        out_t, _ = theirs(inp)
        out_o, _ = ours(inp)
        a = out_o.data if isinstance(out_o, torch.nn.utils.rnn.PackedSequence) else out_o
        b = out_t.data if isinstance(out_t, torch.nn.utils.rnn.PackedSequence) else out_t
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        names = [name for name, _ in theirs.named_parameters()]
        mine = dict(ours.named_parameters())
        ga = torch.autograd.grad(a.sum(), [mine[n] for n in names])
        gb = torch.autograd.grad(b.sum(), [p for _, p in theirs.named_parameters()])
        for name, u, v in zip(names, ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


# ---- torch.compile --------------------------------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_torch_compile_on_gpu(device, kind):
    args, (ours_fn, _) = _layer_problem(kind, T=6, N=3, I=8, H=10, seed=2, device=device)

    def f(x, states, params):
        out, final = ours_fn(x, None, states, params, False)
        return out, final

    compiled = torch.compile(f, fullgraph=True)
    a = _cast(args, torch.float32)
    b = _cast(args, torch.float32)
    out_e, fin_e = f(a[0], a[2], a[3])
    out_c, fin_c = compiled(b[0], b[2], b[3])
    torch.testing.assert_close(out_c, out_e)
    for u, v in zip(fin_c, fin_e):
        torch.testing.assert_close(u, v)
    ga = torch.autograd.grad(out_e.sum(), _leaves(a))
    gb = torch.autograd.grad(out_c.sum(), _leaves(b))
    for u, v in zip(gb, ga):
        torch.testing.assert_close(u, v)


# ---- CUDA graphs ----------------------------------------------------------------------------
def _graph_ops(kind):
    """(forward, backward) calls of one layer operator on static tensors, padded input."""
    ops = torch.ops.rnnkit
    if kind == "lstm":
        def fwd(x, s, p):
            return ops.lstm(x, None, s[0], s[1], *p[:4], None, False)

        def bwd(g, x, s, p, out):
            return ops.lstm_backward(g, None, None, x, None, s[0], s[1], p[0], p[1], None, out[0],
                                     out[3], False)
    elif kind == "gru":
        def fwd(x, s, p):
            return ops.gru(x, None, s[0], *p[:4], False)

        def bwd(g, x, s, p, out):
            return ops.gru_backward(g, None, x, None, s[0], p[0], p[1], out[0], out[2], False)
    else:
        def fwd(x, s, p):
            return ops.rnn(x, None, s[0], *p[:4], "tanh", False)

        def bwd(g, x, s, p, out):
            return ops.rnn_backward(g, None, x, None, s[0], p[0], p[1], out[0], "tanh", False)
    return fwd, bwd


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_cuda_graph_capture_and_replay(device, kind):
    args, _ = _layer_problem(kind, T=10, N=4, I=8, H=16, seed=9, device=device)
    x, _, states, params, _ = _cast(args, torch.float32, grad=False)
    g = torch.randn(10, 4, 16, device=device)
    fwd, bwd = _graph_ops(kind)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (cuBLAS handles, workspaces) outside the capture
        for _ in range(2):
            bwd(g, x, states, params, fwd(x, states, params))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd(x, states, params)
        grads = bwd(g, x, states, params, out)
    for trial in range(3):
        x.copy_(torch.randn_like(x))
        g.copy_(torch.randn_like(g))
        graph.replay()
        torch.cuda.synchronize()
        want = fwd(x, states, params)
        want_grads = bwd(g, x, states, params, want)
        for u, v in zip(out, want):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
        for u, v in zip(grads, want_grads):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
def test_mixed_devices_are_rejected_with_a_message(device):
    x = torch.randn(3, 2, 4, device=device)
    h = torch.zeros(2, 5, device=device)
    w_ih, w_hh = torch.randn(15, 4), torch.randn(15, 5)  # on the CPU
    with pytest.raises(RuntimeError, match="on device"):
        torch.ops.rnnkit.gru(x, None, h, w_ih, w_hh, None, None, False)


@pytest.mark.parametrize("device", CUDA)
def test_integer_input_is_rejected_on_gpu(device):
    x = torch.ones(3, 2, 4, dtype=torch.int32, device=device)
    h = torch.zeros(2, 5, dtype=torch.int32, device=device)
    w = torch.ones(5, 4, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        torch.ops.rnnkit.rnn(x, None, h, w, torch.ones(5, 5, dtype=torch.int32, device=device),
                             None, None, "tanh", False)


def test_info_says_whether_cuda_kernels_run_here():
    from click.testing import CliRunner

    from rnnkit.cli import main

    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    info = rnnkit.build_info()
    if "cuda" in info["backends"] and not info["gpus_visible"]:
        assert "CUDA kernels were built, but no GPU is visible" in result.output
    else:
        assert "no GPU is visible" not in result.output


# ---- the portable matrix-product path -------------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
def test_aten_gemm_path_matches_reference(device, monkeypatch):
    """RNNKIT_CUDA_GEMM=aten sends the per-step products through ATen instead of cuBLAS."""
    from rnnkit import check as C

    monkeypatch.setenv("RNNKIT_CUDA_GEMM", "aten")
    for case in C.cases(device, torch.float64, seed=77):
        result = C.run_case(case, gradcheck=False, opcheck=False)
        assert result.ok, f"{case.name} ({case.label}): {result.detail}"
    args64, (ours_fn, ref_fn) = _layer_problem("lstm", T=8, N=4, I=12, H=20, seed=4, proj=8,
                                               device=device)
    ref64, gref64, seeds = _run(ref_fn, _cast(args64, torch.float64))
    ref_dt, gref_dt, _ = _run(ref_fn, _cast(args64, torch.float16), seeds)
    ours, gours, _ = _run(ours_fn, _cast(args64, torch.float16), seeds)
    _assert_dtype_bound(ours, ref_dt, ref64, torch.float16, "output")
    _assert_dtype_bound(gours, gref_dt, gref64, torch.float16, "gradient")

"""bfloat16 and float16 on the CPU: rnnkit's error against the float64 reference is at most twice
torch.nn's error in the same dtype (plus a floor of an eighth of the dtype's epsilon, relative),
for the outputs, the final states and every gradient (input, h0, c0, every weight)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.hardware import cpu_bf16_features

from ..helpers import assert_inference_equals_training, tensors_of

LAYERS = ("LSTM", "GRU", "RNN")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _inputs(kind: str, T: int, N: int, I: int, H: int, layers: int, D: int, R: int,
            gen: torch.Generator):
    """x: (T, N, I) or (N, I) for a cell, and the initial states in float64."""
    cell = kind.endswith("Cell")
    x = torch.randn((N, I) if cell else (T, N, I), dtype=torch.float64, generator=gen)
    lead = () if cell else (layers * D,)
    states = [torch.randn(*lead, N, R, dtype=torch.float64, generator=gen)]
    if kind.startswith("LSTM"):
        states.append(torch.randn(*lead, N, H, dtype=torch.float64, generator=gen))
    return x, states


def _run(module, dtype, x, states, lengths, seeds):
    """Outputs and the gradients of sum(output * seed) with respect to the input, the initial
    states and every parameter, all as float64; seeds None: the outputs alone."""
    xs = x.to(dtype).requires_grad_()
    hs = [s.to(dtype).requires_grad_() for s in states]
    inp = pack_padded_sequence(xs, lengths, enforce_sorted=False) if lengths is not None else xs
    outs = tensors_of(module(inp, tuple(hs) if len(hs) == 2 else hs[0]))
    if seeds is None:
        return [o.detach().double() for o in outs]
    loss = sum((o.double() * s).sum() for o, s in zip(outs, seeds))
    grads = torch.autograd.grad(loss, [xs, *hs, *module.parameters()])
    return [o.detach().double() for o in outs] + [g.double() for g in grads]


def _errors(kind, dtype, T, N, I, H, packed=False, seed=0, **kwargs):
    """(name, rnnkit's error, torch.nn's error, floor) of every output and gradient."""
    torch.manual_seed(seed)
    ref = getattr(torch.nn, kind)(I, H, **kwargs).double()
    gen = torch.Generator().manual_seed(seed)
    D = 2 if kwargs.get("bidirectional") else 1
    R = kwargs.get("proj_size") or H
    x, states = _inputs(kind, T, N, I, H, kwargs.get("num_layers", 1), D, R, gen)
    lengths = None
    if packed:
        lengths = torch.randint(1, T + 1, (N,), generator=gen)
        lengths[0] = T
    shapes = _run(ref, torch.float64, x, states, lengths, None)
    seeds = [torch.randn(o.shape, dtype=torch.float64, generator=gen) for o in shapes]
    want = _run(ref, torch.float64, x, states, lengths, seeds)
    theirs = _run(copy.deepcopy(ref).to(dtype), dtype, x, states, lengths, seeds)
    ours = _run(rnnkit.from_torch(ref).to(dtype), dtype, x, states, lengths, seeds)
    names = ([f"output {k}" for k in range(len(shapes))] + ["grad input"] +
             [f"grad state {k}" for k in range(len(states))] +
             [f"grad {n}" for n, _ in ref.named_parameters()])
    eps = torch.finfo(dtype).eps
    rows = []
    for name, w, t, o in zip(names, want, theirs, ours, strict=True):
        assert o.shape == w.shape, f"{name}: shape {tuple(o.shape)} != {tuple(w.shape)}"
        rows.append((name, float((o - w).abs().max()), float((t - w).abs().max()),
                     eps / 8 * float(w.abs().max())))
    return rows


def _check(rows):
    bad = [f"{n}: rnnkit {o:.3g} > 2 x torch.nn {t:.3g} + {f:.2g}" for n, o, t, f in rows
           if not o <= 2 * t + f]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("T", [10, 100, 1000])
@pytest.mark.parametrize("kind", LAYERS)
def test_bf16_error_at_most_twice_torch(kind, T):
    _check(_errors(kind, torch.bfloat16, T, N=3, I=5, H=7))


@pytest.mark.parametrize("kind,shape,kwargs", [
    ("LSTM", {"T": 30, "N": 5, "I": 6, "H": 17}, {"packed": True}),
    ("GRU", {"T": 30, "N": 5, "I": 6, "H": 17}, {"packed": True}),
    ("RNN", {"T": 30, "N": 5, "I": 6, "H": 17}, {"packed": True, "nonlinearity": "relu"}),
    ("LSTM", {"T": 20, "N": 4, "I": 6, "H": 9}, {"bidirectional": True, "num_layers": 2}),
    ("GRU", {"T": 20, "N": 4, "I": 6, "H": 9}, {"bidirectional": True, "num_layers": 2, "batch_first": False}),
    ("LSTM", {"T": 40, "N": 3, "I": 6, "H": 11}, {"proj_size": 4}),
    ("LSTM", {"T": 40, "N": 4, "I": 6, "H": 11}, {"proj_size": 4, "bidirectional": True, "packed": True}),
    ("LSTM", {"T": 50, "N": 1, "I": 8, "H": 33}, {}),    # the small-batch fused path
    ("GRU", {"T": 50, "N": 1, "I": 8, "H": 33}, {}),
    ("LSTM", {"T": 25, "N": 20, "I": 8, "H": 40}, {}),   # a batch above the small-batch path: BLAS
    ("GRU", {"T": 25, "N": 20, "I": 8, "H": 40}, {}),
    ("LSTM", {"T": 1, "N": 2, "I": 3, "H": 5}, {}),
    ("LSTMCell", {"T": 1, "N": 4, "I": 6, "H": 9}, {}),
    ("GRUCell", {"T": 1, "N": 4, "I": 6, "H": 9}, {}),
    ("RNNCell", {"T": 1, "N": 4, "I": 6, "H": 9}, {}),
])
def test_bf16_shapes(kind, shape, kwargs):
    _check(_errors(kind, torch.bfloat16, **shape, **kwargs))


@pytest.mark.parametrize("intra_op_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kind,shape,kwargs", [
    ("GRU", {"T": 20, "N": 13, "I": 5, "H": 343}, {}),
    ("GRU", {"T": 15, "N": 20, "I": 7, "H": 342}, {"bidirectional": True, "packed": True}),
    ("LSTM", {"T": 12, "N": 23, "I": 5, "H": 257}, {"packed": True}),
])
def test_bf16_weight_grads_from_transposed_gate_grads(kind, shape, kwargs, intra_op_threads):
    """Layers whose weight gradients have 1024 rows or more (4H for the LSTM, 3H for the GRU) take
    them from gate gradients that the rounding pass also writes transposed, the GRU's rotated by
    H (weight_grads.h); here with H not a multiple of the pass's blocks, more rows than one run of
    its sums (256), and the columns split over two threads."""
    _check(_errors(kind, torch.bfloat16, **shape, **kwargs))


@pytest.mark.parametrize("kind,kwargs", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                         ("LSTM", {"proj_size": 3, "packed": True}),
                                         ("GRUCell", {})])
def test_float16_error_at_most_twice_torch(kind, kwargs):
    _check(_errors(kind, torch.float16, T=60, N=3, I=5, H=7, **kwargs))


@pytest.mark.parametrize("kind,N,kwargs", [("LSTM", 3, {"proj_size": 4}), ("GRU", 3, {}),
                                            ("RNN", 20, {}), ("LSTM", 1, {}), ("GRU", 20, {})])
def test_inference_equals_training_forward(kind, N, kwargs):
    """Inference (no workspace, chunked projection) computes what training's forward does."""
    torch.manual_seed(0)
    m = getattr(rnnkit, kind)(6, 9, bidirectional=True, **kwargs).to(torch.bfloat16)
    assert_inference_equals_training(m, torch.randn(40, N, 6).bfloat16())


def test_double_backward_in_bf16():
    """Gradients of gradients in bfloat16: computed, finite, or a clear error."""
    torch.manual_seed(0)
    m = rnnkit.GRU(4, 5).to(torch.bfloat16)
    x = torch.randn(6, 2, 4).bfloat16().requires_grad_()
    out, _ = m(x)
    (g,) = torch.autograd.grad(out.float().pow(2).sum(), x, create_graph=True)
    g.float().sum().backward()
    assert g.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_inference_chunks_match_training_forward():
    """Inference projects the input in chunks; its output equals the training pass's."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(8, 16).to(torch.bfloat16)
    x = torch.randn(700, 3, 8).bfloat16()  # more rows than one inference chunk
    with torch.no_grad():
        out_inf, (_, c_inf) = m(x)
    out_train, (_, c_train) = m(x.requires_grad_())
    assert out_inf.dtype == torch.bfloat16 and c_inf.dtype == torch.bfloat16
    torch.testing.assert_close(out_inf, out_train.detach(), rtol=0, atol=0)
    torch.testing.assert_close(c_inf, c_train.detach(), rtol=0, atol=0)


def test_workspace_is_float32_and_fakes_agree():
    x = torch.randn(4, 2, 3).bfloat16()
    args = (x, None, torch.zeros(2, 5).bfloat16(), torch.zeros(2, 5).bfloat16(),
            torch.randn(20, 3).bfloat16(), torch.randn(20, 5).bfloat16(), None, None, None, False)
    out, h, c, ws = torch.ops.rnnkit.lstm(*args)
    assert (out.dtype, h.dtype, c.dtype, ws.dtype) == (torch.bfloat16,) * 3 + (torch.float32,)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = torch.ops.rnnkit.lstm(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                       for a in args])
    assert [f.dtype for f in fake] == [out.dtype, h.dtype, c.dtype, ws.dtype]
    assert [f.shape for f in fake] == [out.shape, h.shape, c.shape, ws.shape]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_opcheck_reduced(op, dtype):
    gen = torch.Generator().manual_seed(1)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[op] * 5

    def r(*shape, grad=True):
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_(grad)

    x, h0, c0 = r(4, 2, 3), r(2, 5), r(2, 5)
    w = [r(G, 3), r(G, 5), r(G), r(G)]
    args = {"lstm": (x, None, h0, c0, *w, None, False, True),
            "gru": (x, None, h0, *w, False, True),
            "rnn": (x, None, h0, *w, "tanh", False)}[op]
    torch.library.opcheck(getattr(torch.ops.rnnkit, op).default, args)


def _has_amx():
    """The CPU has AMX-BF16 and Linux grants this process the tile state (as csrc/cpu/amx.h asks:
    arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), syscall 158 on x86-64)."""
    if not cpu_bf16_features()["amx_bf16"]:
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0


needs_amx = pytest.mark.skipif(not _has_amx(), reason="no AMX-BF16 tiles here (CPU or kernel)")


@pytest.mark.parametrize("path,dot,reorder", [("float32", "1", "1"), ("mkl", "1", "1"),
                                              ("onednn", "1", "1"), ("onednn", "0", "0"),
                                              pytest.param("amx", "1", "1", marks=needs_amx)])
def test_every_product_path(path, dot, reorder):
    """RNNKIT_CPU_BF16_PATH chooses the product path, RNNKIT_CPU_BF16_DOT=0 turns the small-batch
    dot products off, RNNKIT_CPU_BF16_REORDER=0 the oneDNN weight reordered once (all read once
    per process: a child). The batch of 20 takes the per-step products, over 40 steps."""
    code = ("import torch, rnnkit, tests.library.test_bf16 as t;"
            "print(rnnkit.build_info()['cpu_bf16_path']);"
            "t._check(t._errors('LSTM', torch.bfloat16, 40, 20, 5, 24, proj_size=7));"
            "t._check(t._errors('GRU', torch.bfloat16, 40, 20, 5, 24, packed=True));"
            "t._check(t._errors('LSTM', torch.bfloat16, 40, 2, 5, 33, bidirectional=True))")
    env = {**os.environ, "RNNKIT_CPU_BF16_PATH": path, "RNNKIT_CPU_BF16_DOT": dot,
           "RNNKIT_CPU_BF16_REORDER": reorder}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first.split()[0] == {"float32": "f32"}.get(path, path), first
    if dot == "0":
        assert first.endswith("small batches: own SIMD, f32 weights"), first
    if path == "onednn":
        reorders = reorder == "1" and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        assert ("reordered once" in first) == reorders, first


def test_build_info_names_the_bf16_path():
    path = rnnkit.build_info()["cpu_bf16_path"]
    assert isinstance(path, str) and path.split()[0] in ("mkl", "onednn", "f32", "amx")
    # the default where the CPU has the tiles and the kernel grants them (unless a path is forced)
    if _has_amx() and "RNNKIT_CPU_BF16_PATH" not in os.environ:
        assert path.startswith("amx"), path


def test_other_dtypes_keep_a_clear_error():
    x = torch.ones(3, 2, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="expected input of dtype float32, float64, float16 or "
                       "bfloat16 on device cpu, got Int"):
        torch.ops.rnnkit.rnn(x, None, torch.zeros(2, 5, dtype=torch.int32),
                             torch.ones(5, 4, dtype=torch.int32),
                             torch.ones(5, 5, dtype=torch.int32), None, None, "tanh", False)

"""The persistent CUDA loops (csrc/cuda/persistent*.cu*), forced on with RNNKIT_CUDA_PERSISTENT=1,
against the float64 reference and against the general CUDA loop (forced with 0): values and
gradients, awkward sizes, every dtype, packed input, reverse direction, and the two loops'
workspaces read by each other's backward; and the default choice, auto. Every test checks through rnnkit._C.persistent_last() that the loop it means to
test really ran. Skips with the reason where the CUDA kernels were not built or no GPU is visible.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit._library  # noqa: F401  (loads rnnkit._C)
from rnnkit import _C
from rnnkit.cells import GATES

from ..conftest import device_param
from .test_cuda import _assert_dtype_bound, _cast, _layer_problem, _run

CUDA = [device_param("cuda")]
KINDS = ["lstm", "gru", "tanh", "relu"]
RAN = ("persistent", "persistent")
MMA_RAN = ("persistent (mma)", "persistent (mma)")  # RNNKIT_CUDA_PERSISTENT_VARIANT=mma ran


@pytest.fixture(autouse=True)
def _full_fp32_products():
    """float32 products in full precision, as the persistent loop computes them."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _run_on(monkeypatch, persistent: bool, fn, args, seeds=None, ran=RAN):
    """_run with the persistent loop forced on or off; asserts which loops ran (on: `ran`)."""
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1" if persistent else "0")
    result = _run(fn, args, seeds)
    last = _C.persistent_last()
    if persistent:
        assert last == ran, f"the persistent loop did not run as {ran}: {last}"
    else:
        assert last[0].startswith("general") and last[1].startswith("general"), last
    return result


def _close(ours, theirs, rtol, atol, what):
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what} {k}: {m}")


# ---- float64: exact agreement on awkward shapes ---------------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T, N, H", [(1, 1, 1), (1, 4, 3), (5, 1, 17), (7, 3, 129), (3, 2, 1),
                                     (300, 2, 17), (4, 9, 40)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_float64_matches_reference_and_general_loop(device, monkeypatch, kind, T, N, H, packed,
                                                    reverse):
    args, (ours_fn, ref_fn) = _layer_problem(kind, T, N, 5, H, seed=T * 100 + N * 10 + H,
                                             packed=packed, reverse=reverse, device=device)
    ref, gref, seeds = _run(ref_fn, _cast(args, torch.float64))
    ours, gours, _ = _run_on(monkeypatch, True, ours_fn, _cast(args, torch.float64), seeds)
    general, ggeneral, _ = _run_on(monkeypatch, False, ours_fn, _cast(args, torch.float64), seeds)
    _close(ours, ref, 1e-10, 1e-10, "output vs reference")
    _close(gours, gref, 1e-10, 1e-10, "gradient vs reference")
    _close(ours, general, 1e-12, 1e-12, "output vs general loop")
    _close(gours, ggeneral, 1e-12, 1e-12, "gradient vs general loop")


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_float64(device, monkeypatch, kind, packed):
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    args, (ours_fn, _) = _layer_problem(kind, T=4, N=3, I=3, H=5, seed=4, packed=packed,
                                        reverse=packed, device=device)
    x, bs, states, params, reverse = _cast(args, torch.float64)
    leaves = [x, *states, *[p for p in params if p is not None]]
    n_states = len(states)

    def f(*flat):
        st = tuple(flat[1:1 + n_states])
        ps = list(flat[1 + n_states:]) + [None] * (len(params) - len(flat[1 + n_states:]))
        out, final = ours_fn(flat[0], bs, st, tuple(ps), reverse)
        return (out, *final)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)
    assert _C.persistent_last() == RAN


# ---- float32 (full precision), larger and chunked shapes ------------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T, N, I, H", [(50, 8, 64, 96), (20, 5, 16, 129), (6, 20, 32, 1024),
                                        (3, 70, 8, 1024)])
def test_float32_matches_reference_and_general_loop(device, monkeypatch, kind, T, N, I, H):
    """H = 1024 in float32 stages the backward's gate gradients in several chunks of rows (4 at a
    time for the LSTM); with N = 70 the forward stages h_prev in several chunks too."""
    args, (ours_fn, ref_fn) = _layer_problem(kind, T, N, I, H, seed=H + N, device=device)
    ref, gref, seeds = _run(ref_fn, _cast(args, torch.float64))
    ours, gours, _ = _run_on(monkeypatch, True, ours_fn, _cast(args, torch.float32), seeds)
    general, ggeneral, _ = _run_on(monkeypatch, False, ours_fn, _cast(args, torch.float32), seeds)
    _close(ours, ref, 1e-4, 1e-4, "output vs reference")
    _close(gours, gref, 1e-4, 1e-4, "gradient vs reference")
    _close(ours, general, 2e-5, 2e-5, "output vs general loop")
    _close(gours, ggeneral, 2e-5, 2e-5, "gradient vs general loop")


# ---- float16 and bfloat16, bound relative to the reference's own error ------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", ["padded", "packed-reverse", "n1-long", "h768"])
def test_low_precision_within_dtype_bound(device, monkeypatch, dtype, kind, config):
    _check_low_precision(device, monkeypatch, dtype, kind, config)


LOW_PRECISION_SHAPES = {"padded": dict(T=12, N=5, I=24, H=33),
                        "packed-reverse": dict(T=12, N=5, I=24, H=33),
                        "n1-long": dict(T=300, N=1, I=8, H=17),
                        "h768": dict(T=16, N=16, I=64, H=768),
                        "n33-h17": dict(T=6, N=33, I=5, H=17)}


def _check_low_precision(device, monkeypatch, dtype, kind, config, ran=RAN):
    """The forced persistent loop (whichever variant the environment names; `ran`, what
    persistent_last() must say) within the dtype bound of the float64 reference, output and every
    gradient."""
    shape = LOW_PRECISION_SHAPES[config]
    packed = config == "packed-reverse"
    args64, (ours_fn, ref_fn) = _layer_problem(kind, **shape, seed=11, packed=packed,
                                               reverse=packed, device=device)
    ref64, gref64, seeds = _run(ref_fn, _cast(args64, torch.float64))
    ref_dt, gref_dt, _ = _run(ref_fn, _cast(args64, dtype), seeds)
    ours, gours, _ = _run_on(monkeypatch, True, ours_fn, _cast(args64, dtype), seeds, ran)
    for o in ours:
        assert torch.isfinite(o).all()
    _assert_dtype_bound(ours, ref_dt, ref64, dtype, "output")
    _assert_dtype_bound(gours, gref_dt, gref64, dtype, "gradient")


# ---- the two loops' workspaces are interchangeable -------------------------------------------
def _ops(kind):
    ops = torch.ops.rnnkit
    if kind == "lstm":
        def fwd(x, bs, s, p, rev):
            return ops.lstm(x, bs, s[0], s[1], *p[:4], None, rev)

        def bwd(g, x, bs, s, p, out, rev):
            return ops.lstm_backward(g, None, None, x, bs, s[0], s[1], p[0], p[1], None, out[0],
                                     out[3], rev)
    elif kind == "gru":
        def fwd(x, bs, s, p, rev):
            return ops.gru(x, bs, s[0], *p[:4], rev)

        def bwd(g, x, bs, s, p, out, rev):
            return ops.gru_backward(g, None, x, bs, s[0], p[0], p[1], out[0], out[2], rev)
    else:
        def fwd(x, bs, s, p, rev):
            return ops.rnn(x, bs, s[0], *p[:4], kind, rev)

        def bwd(g, x, bs, s, p, out, rev):
            return ops.rnn_backward(g, None, x, bs, s[0], p[0], p[1], out[0], kind, rev)
    return fwd, bwd


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_either_backward_reads_either_forward(device, monkeypatch, kind, packed):
    args, _ = _layer_problem(kind, T=9, N=6, I=7, H=19, seed=3, packed=packed, reverse=packed,
                             device=device)
    x, bs, states, params, rev = _cast(args, torch.float64, grad=False)
    fwd, bwd = _ops(kind)
    g = torch.randn(x.shape[:-1] + (19,), dtype=torch.float64, device=device)
    results = {}
    for f_on in (False, True):
        monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1" if f_on else "0")
        out = fwd(x, bs, states, params, rev)
        for b_on in (False, True):
            monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1" if b_on else "0")
            results[f_on, b_on] = (out, bwd(g, x, bs, states, params, out, rev))
            ran = _C.persistent_last()
            assert ran[0].startswith("persistent" if f_on else "general"), ran
            assert ran[1].startswith("persistent" if b_on else "general"), ran
    base_out, base_grads = results[False, False]
    for key, (out, grads) in results.items():
        for a, b in zip(list(out) + list(grads), list(base_out) + list(base_grads)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{key}: {m}")


# ---- the two variants of the kernels give the same values ----------------------------------
@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, N, H", [(torch.float16, 6, 64), (torch.bfloat16, 13, 40),
                                         (torch.float32, 5, 36), (torch.float64, 3, 17),
                                         (torch.float16, 3, 33)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_wide_and_basic_variants_agree_exactly(device, monkeypatch, kind, dtype, N, H, packed):
    """RNNKIT_CUDA_PERSISTENT_VARIANT: wide (the default, which every other test here runs) and
    basic do the same arithmetic in the same order. H = 33 in float16 and H = 17 in float64 have
    rows that are not whole 16-byte pieces, so wide stages them one value at a time."""
    args, (ours_fn, _) = _layer_problem(kind, T=7, N=N, I=5, H=H, seed=N * H, packed=packed,
                                        reverse=packed, device=device)
    results = {}
    for variant in ("wide", "basic"):
        monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", variant)
        results[variant] = _run_on(monkeypatch, True, ours_fn, _cast(args, dtype))
    (out_w, grad_w, _), (out_b, grad_b, _) = results["wide"], results["basic"]
    _close(out_w, out_b, 0, 0, f"{dtype} output, wide vs basic")
    _close(grad_w, grad_b, 0, 0, f"{dtype} gradient, wide vs basic")


@pytest.mark.parametrize("device", CUDA)
def test_bad_variant_is_an_error(device, monkeypatch):
    args, (ours_fn, _) = _layer_problem("lstm", T=2, N=1, I=4, H=8, seed=1, device=device)
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", "fast")
    with pytest.raises(RuntimeError,
                       match="RNNKIT_CUDA_PERSISTENT_VARIANT to be wide, basic or mma"):
        ours_fn(*_cast(args, torch.float32, grad=False))


# ---- the mma variant: the step's product on tensor cores (csrc/cuda/persistent_mma.cuh) -------
def _needs_tensor_cores():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the mma variant needs compute capability 8.0 or later")


def _tf32_fits(H, N, kind, backward):
    """Whether the TF32 tile plan fits this GPU (float32 rows are twice as long as 16-bit ones:
    the LSTM's backward at H = 768 does not fit; the GRU's and RNN's do)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    gates, smem = GATES[kind if kind in GATES else "rnn"], props.shared_memory_per_block_optin
    units = _C.persistent_plan(H, N, gates, 4, backward, props.multi_processor_count,
                               smem)["units"]
    return _C.mma_tile_plan(H, N, gates, units, backward, 8, smem, "tf32")["fits"]


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", list(LOW_PRECISION_SHAPES))
def test_mma_variant_within_dtype_bound(device, monkeypatch, dtype, kind, config):
    """n33-h17: three tiles of rows, the last with one; k padded from 17 to 32 (forward) and
    from 17 K to a multiple of 16 (backward)."""
    _needs_tensor_cores()
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", "mma")
    _check_low_precision(device, monkeypatch, dtype, kind, config, ran=MMA_RAN)


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", list(LOW_PRECISION_SHAPES))
def test_mma_variant_tf32_within_bound(device, monkeypatch, kind, config):
    """float32 with torch.backends.cuda.matmul.allow_tf32 on: the step's product in TF32 (10-bit
    mantissas, as float16's), so the bound is float16's: twice the error of the reference run in
    float16. Where the float32 rows do not fit in shared memory (the LSTM's backward at H = 768)
    that direction runs the wide variant, saying why."""
    _needs_tensor_cores()
    torch.backends.cuda.matmul.allow_tf32 = True  # the autouse fixture restores it
    shape = LOW_PRECISION_SHAPES[config]
    packed = config == "packed-reverse"
    args64, (ours_fn, ref_fn) = _layer_problem(kind, **shape, seed=12, packed=packed,
                                               reverse=packed, device=device)
    ref64, gref64, seeds = _run(ref_fn, _cast(args64, torch.float64))
    ref16, gref16, _ = _run(ref_fn, _cast(args64, torch.float16), seeds)
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", "mma")
    ours, gours, _ = _run(ours_fn, _cast(args64, torch.float32), seeds)
    for ran, backward in zip(_C.persistent_last(), (False, True)):
        if _tf32_fits(shape["H"], shape["N"], kind, backward):
            assert ran == MMA_RAN[backward], (backward, ran)
        else:
            assert ran.startswith("persistent (wide: the mma variant's layout: "), (backward, ran)
    _assert_dtype_bound(ours, ref16, ref64, torch.float16, "output")
    _assert_dtype_bound(gours, gref16, gref64, torch.float16, "gradient")


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("dtype, why", [
    (torch.float32, "float32 products stay full precision while "
                    "torch.backends.cuda.matmul.allow_tf32 is off"),
    (torch.float64, "the mma variant takes float16, bfloat16 or float32 (as TF32)")])
def test_mma_variant_without_tensor_core_values_runs_wide_and_says_why(device, monkeypatch,
                                                                       dtype, why):
    _needs_tensor_cores()
    args, (ours_fn, ref_fn) = _layer_problem("lstm", T=3, N=2, I=4, H=8, seed=1, device=device)
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", "mma")
    ours, gours, seeds = _run(ours_fn, _cast(args, dtype))
    ref, gref, _ = _run(ref_fn, _cast(args, dtype), seeds)
    assert _C.persistent_last() == (f"persistent (wide: {why})",) * 2
    _close(ours, ref, 1e-5, 1e-5, "output vs reference")
    _close(gours, gref, 1e-5, 1e-5, "gradient vs reference")

# ---- what falls back, and how it says so -----------------------------------------------------
@pytest.mark.parametrize("device", CUDA)
def test_projection_falls_back_and_says_why(device, monkeypatch):
    args, (ours_fn, ref_fn) = _layer_problem("lstm", T=5, N=3, I=4, H=8, seed=1, proj=3,
                                             device=device)
    ref, gref, seeds = _run(ref_fn, _cast(args, torch.float64))
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    ours, gours, _ = _run(ours_fn, _cast(args, torch.float64), seeds)
    fwd, bwd = _C.persistent_last()
    assert "proj_size" in fwd and "proj_size" in bwd and fwd.startswith("general")
    _close(ours + gours, ref + gref, 1e-10, 1e-10, "proj_size fallback")


@pytest.mark.parametrize("device", CUDA)
def test_too_large_for_shared_memory_falls_back_and_says_why(device, monkeypatch):
    # float64 W_hh slices of an LSTM with H = 2048 exceed any GPU's shared memory per block.
    args, (ours_fn, _) = _layer_problem("lstm", T=2, N=1, I=4, H=2048, seed=1, device=device)
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    out, final = ours_fn(*_cast(args, torch.float64, grad=False))
    fwd, _ = _C.persistent_last()
    assert fwd.startswith("general") and "shared memory" in fwd, fwd
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "0")
    out2, final2 = ours_fn(*_cast(args, torch.float64, grad=False))
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


@pytest.mark.parametrize("device", CUDA)
def test_bad_switch_value_is_an_error(device, monkeypatch):
    args, (ours_fn, _) = _layer_problem("gru", T=2, N=1, I=4, H=3, seed=1, device=device)
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "yes")
    with pytest.raises(RuntimeError, match="RNNKIT_CUDA_PERSISTENT to be 0, 1 or auto"):
        ours_fn(*_cast(args, torch.float32, grad=False))


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("switch", [None, "", "auto"], ids=["unset", "empty", "auto"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_auto_is_the_default_and_follows_the_rule(device, monkeypatch, switch, kind):
    """auto takes the persistent loop exactly where rnnkit._C.persistent_auto (the rule of
    common/persistent.h, checked against the measured table in test_persistent_plan.py) says so,
    and gives the same values as forcing it."""
    cases = [(torch.float16, 2, 8, True), (torch.bfloat16, 16, 256, True),
             (torch.float16, 17, 40, False), (torch.bfloat16, 5, 300, False),
             (torch.float32, 2, 8, False), (torch.float64, 1, 4, False)]
    for dtype, N, H, expected in cases:
        args, (ours_fn, _) = _layer_problem(kind, T=3, N=N, I=4, H=H, seed=N + H, device=device)
        if switch is None:
            monkeypatch.delenv("RNNKIT_CUDA_PERSISTENT", raising=False)
        else:
            monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", switch)
        ours, gours, seeds = _run(ours_fn, _cast(args, dtype))
        ran = _C.persistent_last()
        want = _C.persistent_auto(H, N, torch.empty((), dtype=dtype).element_size())
        assert want == expected, (dtype, N, H)
        if want:
            assert ran == RAN, (dtype, N, H, ran)
            forced, gforced, _ = _run_on(monkeypatch, True, ours_fn, _cast(args, dtype), seeds)
            _close(ours, forced, 0, 0, "auto vs forced")
            _close(gours, gforced, 0, 0, "auto gradient vs forced")
        else:
            assert ran[0].startswith("general: auto") and ran[1].startswith("general: auto"), ran


@pytest.mark.parametrize("device", CUDA)
def test_module_training_step_runs_persistent(device, monkeypatch):
    """An nn module (two layers, bidirectional) trains through the persistent loops and agrees
    with the general loops."""
    import rnnkit

    torch.manual_seed(0)
    model = rnnkit.LSTM(6, 20, num_layers=2, bidirectional=True).to(device)
    x = torch.randn(15, 4, 6, device=device)
    grads = {}
    for on in (False, True):
        monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1" if on else "0")
        model.zero_grad()
        out, _ = model(x)
        out.square().sum().backward()
        ran = _C.persistent_last()
        assert ran == RAN if on else ran[0].startswith("general"), ran
        grads[on] = [out.detach()] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
@pytest.mark.parametrize("variant, dtype", [("wide", torch.float32), ("mma", torch.float16)])
def test_cuda_graph_capture_and_replay(device, monkeypatch, kind, variant, dtype):
    """Padded input needs no step tables, so a layer call (forward and backward) is capturable,
    in either variant (the mma variant's plan is made on the host at each call, like wide's)."""
    if variant == "mma":
        _needs_tensor_cores()
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT_VARIANT", variant)
    args, _ = _layer_problem(kind, T=10, N=4, I=8, H=16, seed=9, device=device)
    x, _, states, params, _ = _cast(args, dtype, grad=False)
    g = torch.randn(10, 4, 16, device=device, dtype=dtype)
    fwd, bwd = _ops(kind)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        for _ in range(2):
            bwd(g, x, None, states, params, fwd(x, None, states, params, False), False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd(x, None, states, params, False)
        grads = bwd(g, x, None, states, params, out, False)
    assert _C.persistent_last() == (MMA_RAN if variant == "mma" else RAN)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        g.copy_(torch.randn_like(g))
        graph.replay()
        torch.cuda.synchronize()
        want = fwd(x, None, states, params, False)
        want_grads = bwd(g, x, None, states, params, want, False)
        for u, v in zip(list(out) + list(grads), list(want) + list(want_grads)):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", CUDA)
def test_packed_input_under_graph_capture_runs_the_general_loop(device, monkeypatch):
    """Packed input needs step tables copied from host memory at each call, which a graph replay
    would read after the call gave them back: during capture the general loop runs, and says so."""
    monkeypatch.setenv("RNNKIT_CUDA_PERSISTENT", "1")
    args, _ = _layer_problem("lstm", T=6, N=4, I=8, H=16, seed=5, packed=True, device=device)
    x, bs, states, params, _ = _cast(args, torch.float32, grad=False)
    fwd, _ = _ops("lstm")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fwd(x, bs, states, params, False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd(x, bs, states, params, False)
    ran = _C.persistent_last()[0]
    assert ran.startswith("general") and "capture" in ran, ran
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    want = fwd(x, bs, states, params, False)  # eager, outside capture: the persistent loop
    assert _C.persistent_last()[0] == "persistent"
    for u, v in zip(out, want):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)

"""Property tests (hypothesis): random configurations agree with torch.nn and the reference;
random bad arguments always raise an exception with a message.

Example counts scale with RNNKIT_HYPOTHESIS_PROFILE: "default" (a CI run, well under two minutes
on two cores), "soak" (25 times more) or "sanitize" (a quarter, for the -O0 sanitizer build of
tools/sanitize.sh). RNNKIT_HYPOTHESIS_EXAMPLES multiplies further. What was tried is counted in
COUNTS and printed at the end of the pytest run (see conftest.py).
"""

from __future__ import annotations

import collections
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
import rnnkit.reference

from .fuzz_child import BATCH_SIZES_BREAKS, DTYPES, MODULE_KINDS, NONTENSORS, OPS, OpWorker

PROFILE = os.environ.get("RNNKIT_HYPOTHESIS_PROFILE", "default")
SCALE = {"default": 1.0, "soak": 25.0, "sanitize": 0.25}[PROFILE]
SCALE *= float(os.environ.get("RNNKIT_HYPOTHESIS_EXAMPLES", "1"))

#: What the properties tried, for the report: properties (good configurations checked), bad
#: inputs tried, and how each bad input ended.
COUNTS: collections.Counter = collections.Counter()


def examples(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---- good configurations agree with torch.nn and the reference -----------------------------
@st.composite
def layer_configs(draw):
    kind = draw(st.sampled_from(["LSTM", "GRU", "RNN_tanh", "RNN_relu"]))
    H = draw(st.integers(1, 70))
    cfg = dict(
        kind=kind, H=H, I=draw(st.integers(1, 12)), layers=draw(st.integers(1, 3)),
        bi=draw(st.booleans()), bf=draw(st.booleans()), bias=draw(st.booleans()),
        proj=draw(st.integers(0, H - 1)) if kind == "LSTM" and H > 1 and draw(st.booleans()) else 0,
        dtype=draw(st.sampled_from(["float64", "float32"])),
        layout=draw(st.sampled_from(["padded", "packed_sorted", "packed_unsorted", "unbatched"])),
        N=draw(st.integers(0, 9)), T=draw(st.integers(1, 50)), hx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    if cfg["layout"].startswith("packed"):
        cfg["N"] = max(cfg["N"], 1)  # pack_padded_sequence needs a sequence
        cfg["lengths"] = draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["N"],
                                       max_size=cfg["N"]))
        if cfg["layout"] == "packed_sorted":
            cfg["lengths"] = sorted(cfg["lengths"], reverse=True)
    # Keep one example's cost bounded: the reference is a Python loop over steps and layers.
    assume(cfg["T"] * cfg["layers"] * (2 if cfg["bi"] else 1) <= 200)
    return cfg


def _torch_module(cfg: dict) -> torch.nn.Module:
    kind = cfg["kind"]
    extra = {"proj_size": cfg["proj"]} if cfg["proj"] else {}
    if kind.startswith("RNN"):
        extra["nonlinearity"] = kind.split("_")[1]
    torch.manual_seed(cfg["seed"])
    return getattr(torch.nn, kind.split("_")[0])(
        cfg["I"], cfg["H"], num_layers=cfg["layers"], bias=cfg["bias"], batch_first=cfg["bf"],
        bidirectional=cfg["bi"], dtype=torch.float64, **extra)


def _inputs(cfg: dict, dtype: torch.dtype):
    """(x, hx): x a leaf that requires grad (padded, batch_first as configured, or unbatched);
    hx None or the initial states, leaves too. The same values for every dtype."""
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    T, N, I = cfg["T"], cfg["N"], cfg["I"]
    if cfg["layout"] == "unbatched":
        shape = (T, I)
    else:
        shape = (N, T, I) if cfg["bf"] else (T, N, I)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    if not cfg["hx"]:
        return x, None
    LD = cfg["layers"] * (2 if cfg["bi"] else 1)
    batch = () if cfg["layout"] == "unbatched" else (N,)
    sizes = [cfg["proj"] or cfg["H"]] + ([cfg["H"]] if cfg["kind"] == "LSTM" else [])
    states = [torch.randn((LD, *batch, s), generator=gen, dtype=torch.float64).to(dtype)
              .requires_grad_() for s in sizes]
    return x, (tuple(states) if cfg["kind"] == "LSTM" else states[0])


def _run(module, cfg: dict, dtype: torch.dtype):
    """Outputs (output, h_n[, c_n]) and the gradients of (x, states..., parameters...) for fixed
    random output weights."""
    x, hx = _inputs(cfg, dtype)
    arg = x
    if cfg["layout"].startswith("packed"):
        arg = pack_padded_sequence(x, torch.tensor(cfg["lengths"]), batch_first=cfg["bf"],
                                   enforce_sorted=cfg["layout"] == "packed_sorted")
    out, finals = module(arg) if hx is None else module(arg, hx)
    if isinstance(out, PackedSequence):
        out = out.data
    outs = [out] + (list(finals) if isinstance(finals, tuple) else [finals])
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    seeds = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in outs]
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    leaves += list(module.parameters())
    grads = torch.autograd.grad(outs, leaves, seeds, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    names = ["output", "h_n", "c_n"][: len(outs)]
    names += ["grad input"] + [f"grad hx[{k}]" for k in range(len(leaves) - 1 - len(list(module.parameters())))]
    names += [f"grad {n}" for n, _ in module.named_parameters()]
    return list(zip(names, outs + grads))


def _assert_float64(got, expected, who: str):
    for (name, a), (_, b) in zip(got, expected):
        assert a.shape == b.shape, f"{who} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True,
                                   msg=lambda m: f"{who} {name}: {m}")


def _assert_float32(ours, theirs32, oracle, floor_scale=1e-5):
    """style.md's bound for a low-precision kernel: max|ours - ref64| <= 2 max|torch32 - ref64|
    + floor, per tensor, with the floor relative to the tensor's magnitude."""
    for (name, a), (_, b), (_, ref) in zip(ours, theirs32, oracle):
        assert a.shape == ref.shape, f"{name}: shape {tuple(a.shape)} != {tuple(ref.shape)}"
        if ref.numel() == 0:
            continue
        ours_err = (a.double() - ref).abs().max().item()
        torch_err = (b.double() - ref).abs().max().item()
        floor = floor_scale * max(1.0, ref.abs().max().item())
        assert ours_err <= 2 * torch_err + floor, (
            f"{name}: rnnkit float32 is {ours_err:.3g} from the float64 result, torch.nn float32 "
            f"{torch_err:.3g} (bound {2 * torch_err + floor:.3g})")


@examples(30)
@given(cfg=layer_configs())
def test_layers_agree_with_torch_and_reference(cfg):
    """Outputs, final states and gradients of x, hx and every parameter: rnnkit, torch.nn and
    rnnkit.reference (float64 oracle); float32 within twice torch.nn's own float32 error."""
    COUNTS["properties tried"] += 1
    note(repr(cfg))
    dtype = DTYPES[cfg["dtype"]]
    theirs = _torch_module(cfg)
    oracle = _run(theirs, cfg, torch.float64)
    ref = rnnkit.reference.__dict__[cfg["kind"].split("_")[0]](**rnnkit.nn._config(theirs),
                                                               dtype=torch.float64)
    ref.load_state_dict(theirs.state_dict())
    _assert_float64(_run(ref, cfg, torch.float64), oracle, "reference vs torch.nn")
    ours = rnnkit.from_torch(theirs).to(dtype)
    if dtype == torch.float64:
        _assert_float64(_run(ours, cfg, dtype), oracle, "rnnkit vs torch.nn")
    else:
        _assert_float32(_run(ours, cfg, dtype), _run(theirs.to(dtype), cfg, dtype), oracle)
    COUNTS["properties passed"] += 1


@examples(30)
@given(kind=st.sampled_from(["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"]),
       I=st.integers(1, 12), H=st.integers(1, 70), N=st.integers(0, 9), batched=st.booleans(),
       hx=st.booleans(), bias=st.booleans(), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**31 - 1))
def test_cells_agree_with_torch(kind, I, H, N, batched, hx, bias, dtype, seed):
    COUNTS["properties tried"] += 1
    name, *act = kind.split("_")
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, name)(I, H, bias=bias, dtype=torch.float64,
                                     **({"nonlinearity": act[0]} if act else {}))
    ours = rnnkit.from_torch(theirs)
    gen = torch.Generator().manual_seed(seed)
    batch = (N,) if batched else ()
    x = torch.randn(*batch, I, generator=gen, dtype=torch.float64)
    states = [torch.randn(*batch, H, generator=gen, dtype=torch.float64)
              for _ in range(2 if name == "LSTMCell" else 1)] if hx else []

    def run(module, dt):
        xs = x.to(dt).requires_grad_()
        ss = [s.to(dt).requires_grad_() for s in states]
        arg = None if not ss else tuple(ss) if name == "LSTMCell" else ss[0]
        out = module(xs, arg)
        outs = list(out) if isinstance(out, tuple) else [out]
        g = torch.Generator().manual_seed(seed + 1)
        seeds = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(dt) for o in outs]
        leaves = [xs, *ss, *module.parameters()]
        grads = torch.autograd.grad(outs, leaves, seeds, allow_unused=True)
        grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, leaves)]
        return [(f"result {k}", t) for k, t in enumerate(outs + grads)]

    oracle = run(theirs, torch.float64)
    if dtype == "float64":
        _assert_float64(run(ours, torch.float64), oracle, "rnnkit vs torch.nn")
    else:
        _assert_float32(run(ours.float(), torch.float32), run(theirs.float(), torch.float32), oracle)
    COUNTS["properties passed"] += 1


# ---- bad arguments raise, in a child process ---------------------------------------------------
@pytest.fixture(scope="module")
def worker():
    w = OpWorker(timeout=120.0)
    yield w
    w.close()


def _expect_clean_refusal(worker, spec: dict, group: str) -> None:
    note(repr(spec))
    reply = worker.run(spec)
    outcome = reply["outcome"]
    if outcome == "valid":  # the mutation happened to leave a valid call: not a bad input
        return
    if spec.get("mutation") == "noncontiguous":
        COUNTS["strided views tried"] += 1
        assert outcome == "returned" and reply["same_as_valid"], (
            f"a non-contiguous view of a valid argument must give the same result: {reply}")
        COUNTS["strided views same result"] += 1
        return
    COUNTS["bad inputs tried"] += 1
    COUNTS[f"bad inputs tried ({group})"] += 1
    assert outcome != "crashed", f"the child process died (exit code {reply['exitcode']}): {spec}"
    assert outcome != "hung", f"no answer within {reply['timeout']} s: {spec}"
    assert outcome != "harness_error", reply["message"]
    assert outcome == "raised", f"a bad argument was accepted ({reply}): {spec}"
    assert reply["message"].strip(), f"{reply['type']} without a message: {spec}"
    COUNTS["bad inputs raised cleanly"] += 1
    if reply.get("by") == "torch.nn.utils.rnn":
        COUNTS["of which refused by torch's pack_padded_sequence"] += 1
    if reply.get("torch") == "accepted":
        COUNTS["of which torch.nn accepted"] += 1


@st.composite
def op_specs(draw):
    op = draw(st.sampled_from(OPS))
    H = draw(st.integers(1, 6))
    spec = dict(op=op, T=draw(st.integers(1, 5)), N=draw(st.integers(1, 4)),
                I=draw(st.integers(1, 5)), H=H,
                proj=draw(st.integers(1, H - 1)) if H > 1 and draw(st.booleans()) else 0,
                packed=draw(st.booleans()), reverse=draw(st.booleans()), bias=draw(st.booleans()),
                train=draw(st.booleans()),
                dtype=draw(st.sampled_from(["float32", "float64"])),
                nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
                seed=draw(st.integers(0, 2**31 - 1)), arg=draw(st.integers(0, 20)))
    kinds = ["shape", "dtype", "device", "nontensor", "noncontiguous"]
    if spec["packed"] and "cell" not in op:
        kinds.append("batch_sizes")
    if op.startswith("rnn"):
        kinds.append("nonlinearity")
    spec["mutation"] = draw(st.sampled_from(kinds))
    spec["params"] = dict(
        shape=draw(st.lists(st.integers(0, 6), max_size=4)),
        dtype=draw(st.sampled_from(sorted(DTYPES))),
        value=draw(st.sampled_from([1, 2.5, [1.0], "x", None])),
        how=draw(st.sampled_from(BATCH_SIZES_BREAKS)))
    if spec["mutation"] == "nonlinearity":
        spec["params"]["value"] = draw(st.text(max_size=6).filter(lambda s: s not in ("tanh", "relu")))
    return spec


@examples(150)
@given(spec=op_specs())
def test_operators_refuse_bad_arguments(worker, spec):
    """Straight into torch.ops.rnnkit.* with one argument of the wrong shape, dtype, device or
    type, broken batch_sizes or an unknown nonlinearity: an exception with a message."""
    _expect_clean_refusal(worker, spec, "operators")


@st.composite
def module_specs(draw):
    kind = draw(st.sampled_from(MODULE_KINDS))
    cell = kind.endswith("Cell")
    H = draw(st.integers(1, 8))
    spec = dict(kind=kind, I=draw(st.integers(1, 6)), H=H, N=draw(st.integers(1, 4)),
                T=draw(st.integers(1, 5)), layers=draw(st.integers(1, 3)), bi=draw(st.booleans()),
                bf=draw(st.booleans()),
                proj=draw(st.integers(1, H - 1)) if kind == "LSTM" and H > 1 and draw(st.booleans()) else 0,
                dtype=draw(st.sampled_from(["float32", "float64"])),
                seed=draw(st.integers(0, 2**31 - 1)))
    mutations = ["input_features", "input_ndim", "input_dtype", "input_device", "input_nontensor",
                 "hx_shape", "hx_ndim", "hx_dtype", "hx_device", "hx_nontensor"]
    if not cell:
        mutations += ["input_no_steps", "packed_batch_sizes", "lengths"]
    if kind == "LSTM":
        mutations.append("lstm_hx_arity")
    spec["mutation"] = draw(st.sampled_from(mutations))
    lengths = ["nan", "negative", "zero", "inf"]
    if spec["N"] >= 2 and spec["T"] >= 2:
        lengths.append("unsorted")
    spec["params"] = dict(
        delta=draw(st.integers(-1, 3).filter(bool)), ndim=draw(st.integers(0, 5)),
        dtype=draw(st.sampled_from(sorted(DTYPES))), value=draw(st.sampled_from(sorted(NONTENSORS))),
        which=draw(st.integers(0, 1)), dim=draw(st.integers(0, 2)), drop=draw(st.booleans()),
        fewer=draw(st.booleans()), how=draw(st.sampled_from(BATCH_SIZES_BREAKS)),
        lengths=draw(st.sampled_from(lengths)), index=draw(st.integers(0, 3)))
    return spec


@examples(120)
@given(spec=module_specs())
def test_modules_refuse_bad_arguments(worker, spec):
    """rnnkit.LSTM/GRU/RNN and the cells with bad inputs, states, hand-made PackedSequences and
    bad lengths: an exception with a message."""
    _expect_clean_refusal(worker, spec, "modules")


def test_worker_reports_crashes_and_hangs(worker):
    """The harness itself: a child that dies or hangs is reported as such, and the next spec
    runs in a fresh child."""
    spec = dict(op="lstm", T=2, N=1, I=2, H=2, dtype="float32", seed=0, arg=0,
                mutation="shape", params={"shape": [1]})
    assert worker.run(spec)["outcome"] == "raised", worker.run(spec)
    assert worker.run({"harness": "die"})["outcome"] == "crashed"
    assert worker.run(spec)["outcome"] == "raised"
    timeout, worker.timeout = worker.timeout, 2.0
    try:
        assert worker.run({"harness": "hang"})["outcome"] == "hung"
    finally:
        worker.timeout = timeout
    assert worker.run(spec)["outcome"] == "raised"


# Bad calls that were accepted before the checks they now meet were added (each ran out of
# bounds, returned garbage, or overflowed a signed sum); run in the child like the rest.
BASE = dict(T=3, N=4, I=2, H=3, proj=0, packed=False, reverse=False, bias=True, dtype="float64",
            seed=5, params={})
REGRESSIONS = {
    # c0 was not checked by lstm_backward: a [1, H] c0 read past the end of c_prev (ASan:
    # heap-buffer-overflow in backward_kernel), an int64 c0 gave a result.
    "lstm_backward c0 [1, H]": dict(BASE, op="lstm_backward", arg="c0", mutation="shape",
                                    params={"shape": [1, 3]}),
    "lstm_backward c0 int64": dict(BASE, op="lstm_backward", arg="c0", mutation="dtype",
                                   params={"dtype": "int64"}),
    # output was only reshaped (view), never checked, by the backward operators: an output of
    # the right size and the wrong shape was accepted.
    "gru_backward output reshaped": dict(BASE, op="gru_backward", arg="output", mutation="shape",
                                         params={"shape": [36]}),
    # One meta argument sent the call to the fake implementation, which returned uninitialised
    # CPU tensors.
    "lstm h0 on meta": dict(BASE, op="lstm", arg="h0", mutation="device"),
    "gru_cell_backward grad_hy on meta": dict(BASE, op="gru_cell_backward", arg="grad_hy",
                                              mutation="device"),
    "rnn batch_sizes on meta": dict(BASE, op="rnn", packed=True, arg="batch_sizes",
                                    mutation="device"),
    # batch_sizes of 2^62 each: their sum overflowed int64 (undefined behaviour) before the
    # row-count check.
    "lstm batch_sizes 2^62": dict(BASE, op="lstm", packed=True, mutation="batch_sizes",
                                  params={"how": "huge"}),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regressions_found_by_fuzzing(worker, name):
    reply = worker.run(REGRESSIONS[name])
    assert reply["outcome"] == "raised" and reply["message"], reply


def test_empty_sequence_raises_like_torch():
    """torch.nn refuses a padded input with no time steps; rnnkit did return empty outputs."""
    for kind in ("LSTM", "GRU", "RNN"):
        theirs = getattr(torch.nn, kind)(3, 4)
        ours = rnnkit.from_torch(theirs)
        for x in (torch.randn(0, 2, 3), torch.randn(0, 3)):
            with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
                theirs(x)
            with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
                ours(x)

"""Bad-argument calls into rnnkit, run in a child process.

Two targets: the modules (rnnkit.LSTM, ..., with bad inputs, states and hand-made PackedSequences)
and the operators themselves (torch.ops.rnnkit.*). A direct operator call skips every check the
Python modules make, so it is where a missing check in C++ would read or write out of bounds.
Both run in a spawned child (``OpWorker``) so that a segmentation fault or a hang fails the one
test that caused it instead of killing pytest.

A call is described by a plain dict (a *spec*, picklable): a valid configuration and one mutation
of one argument. ``run_spec`` builds the valid arguments, applies the mutation and reports what
happened. Mutations are chosen so that the call is invalid (an exception is the only right
answer), except ``noncontiguous``, which must give the same result as the contiguous call.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from typing import Any

import torch

OPS = ("lstm", "lstm_backward", "lstm_cell", "lstm_cell_backward", "gru", "gru_backward",
       "gru_cell", "gru_cell_backward", "rnn", "rnn_backward", "rnn_cell", "rnn_cell_backward")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
          "bool": torch.bool, "complex64": torch.complex64}
# Ways to break batch_sizes (packed layer operators), each invalid whatever the rest.
BATCH_SIZES_BREAKS = ("nan", "float", "negative", "zero", "increasing", "sum_too_big",
                      "sum_too_small", "two_dim", "empty", "huge", "int32", "list")


def _schema_names(op: str) -> list[str]:
    return [a.name for a in getattr(torch.ops.rnnkit, op).default._schema.arguments]


def _family(op: str) -> str:
    return op.split("_")[0]


def _batch_sizes(T: int, N: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (N,), generator=gen).sort(descending=True).values
    lengths[0] = T
    return torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.long)


def valid_args(spec: dict) -> tuple[list[str], list[Any]]:
    """The argument names and values of a valid call of spec["op"] for spec's sizes.

    spec: op, T, N, I, H, proj (LSTM layers: projection size, 0 for none), packed (layer ops),
    reverse, bias, dtype, seed.
    """
    op, fam = spec["op"], _family(spec["op"])
    gen = torch.Generator().manual_seed(spec["seed"])
    dtype = DTYPES[spec["dtype"]]
    T, N, I, H = spec["T"], spec["N"], spec["I"], spec["H"]
    cell = "cell" in op
    proj = spec.get("proj", 0) if fam == "lstm" and not cell else 0
    R = proj or H
    G = GATES[fam] * H

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    bs = _batch_sizes(T, N, gen) if spec.get("packed") and not cell else None
    if cell:
        x = rand(N, I)
    else:
        x = rand(int(bs.sum()), I) if bs is not None else rand(T, N, I)
    v: dict[str, Any] = {
        "input": x, "batch_sizes": bs, "h0": rand(N, R), "c0": rand(N, H), "hx": rand(N, H),
        "cx": rand(N, H), "w_ih": rand(G, I), "w_hh": rand(G, R), "reverse": spec.get("reverse", False),
        "train": spec.get("train", True),
        "b_ih": rand(G) if spec.get("bias", True) else None,
        "b_hh": rand(G) if spec.get("bias", True) else None,
        "w_hr": rand(R, H) if proj else None, "nonlinearity": spec.get("nonlinearity", "tanh"),
        # zoneout off (tests/library/test_zoneout.py checks its arguments)
        "zoneout_h": None, "zoneout_h_p": 0.0, "zoneout_c": None, "zoneout_c_p": 0.0,
    }
    fwd = op.replace("_backward", "")
    if op.endswith("_backward"):
        f_names = _schema_names(fwd)
        v["train"] = True  # the workspace that backward reads
        result = getattr(torch.ops.rnnkit, fwd)(*[v[n] for n in f_names])
        result = result if isinstance(result, (tuple, list)) else (result,)
        if cell:
            v["hy"] = result[0]
            if len(result) > 2 or fam == "gru":
                v["workspace"] = result[-1]
            v["grad_hy"] = torch.randn_like(result[0])
            v["grad_cy"] = torch.randn_like(result[1]) if fam == "lstm" else None
        else:
            v["output"] = result[0]
            if fam != "rnn":
                v["workspace"] = result[-1]
            v["grad_output"] = torch.randn_like(result[0])
            v["grad_h_n"] = torch.randn_like(result[1])
            v["grad_c_n"] = torch.randn_like(result[2]) if fam == "lstm" else None
    names = _schema_names(op)
    return names, [v[n] for n in names]


def _random_other_shape(shape: tuple, gen: torch.Generator, params: dict) -> tuple:
    new = tuple(params["shape"])
    if new == tuple(shape):  # make it differ: grow the last dim (or add one)
        new = new[:-1] + (new[-1] + 1,) if new else (1,)
    return new


def _break_batch_sizes(bs: torch.Tensor, how: str):
    T = bs.numel()
    if how == "nan":
        out = bs.double()
        out[T // 2] = float("nan")
        return out
    if how == "float":
        return bs.float()
    if how == "negative":
        out = bs.clone()
        out[-1] = -out[-1]
        return out
    if how == "zero":
        out = bs.clone()
        out[-1] = 0
        return out
    if how == "increasing":
        return bs.flip(0) if bs[0] != bs[-1] else torch.cat([bs[:1], bs + 1])
    if how == "sum_too_big":
        return torch.cat([bs[:1], bs])
    if how == "sum_too_small":
        return bs[1:] if T > 1 else bs - 1 if bs[0] > 1 else torch.zeros(0, dtype=torch.long)
    if how == "two_dim":
        return bs.unsqueeze(0)
    if how == "empty":
        return bs[:0]
    if how == "huge":  # sums that overflow int64 if added up unchecked
        return torch.full((4,), 2**62, dtype=torch.long)
    if how == "int32":
        return bs.int()
    if how == "list":
        return bs.tolist()
    raise ValueError(how)


def mutate(names: list[str], args: list[Any], spec: dict) -> list[Any]:
    """Applies spec["mutation"] to the argument spec["arg"]: a name, or an index into the tensor
    arguments (modulo their number)."""
    args = list(args)
    kind = spec["mutation"]
    params = spec.get("params", {})
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    if kind == "nonlinearity":
        args[names.index("nonlinearity")] = params["value"]
        return args
    if kind == "batch_sizes":
        k = names.index("batch_sizes")
        args[k] = _break_batch_sizes(args[k], params["how"])
        return args
    tensor_args = [k for k, (n, a) in enumerate(zip(names, args))
                   if isinstance(a, torch.Tensor) and n != "batch_sizes"]
    if isinstance(spec["arg"], str):  # an argument by name
        k = names.index(spec["arg"])
    else:
        k = tensor_args[spec["arg"] % len(tensor_args)]
    t = args[k]
    if kind == "shape":
        shape = _random_other_shape(t.shape, gen, params)
        args[k] = torch.randn(shape, generator=gen, dtype=torch.float64).to(t.dtype)
    elif kind == "dtype":
        target = DTYPES[params["dtype"]]
        if target == t.dtype:
            target = torch.float64 if t.dtype == torch.float32 else torch.float32
        args[k] = t.to(target) if target != torch.bool else t > 0
    elif kind == "device":
        args[k] = t.to("meta")
    elif kind == "nontensor":
        args[k] = params["value"]
    elif kind == "noncontiguous":
        # The same values through a strided view: valid, must give the same result.
        if t.dim() >= 2:
            args[k] = t.t().contiguous().t() if t.dim() == 2 else t.transpose(0, 1).contiguous().transpose(0, 1)
        else:
            wide = torch.zeros(t.shape + (2,), dtype=t.dtype)
            wide[..., 0] = t
            args[k] = wide[..., 0]
        assert torch.equal(args[k], t)
    else:
        raise ValueError(kind)
    return args


def is_valid_anyway(spec: dict, names: list[str], args: list[Any]) -> bool:
    """Whether a shape mutation left a valid call: the only free size is the number of steps T
    of padded input to a forward layer operator."""
    if spec["mutation"] == "nontensor" and spec["params"]["value"] is None:
        schema = getattr(torch.ops.rnnkit, spec["op"]).default._schema
        k = [k for k, (n, a) in enumerate(zip(names, args)) if a is None and
             not isinstance(valid_args(spec)[1][k], type(None))]
        return all(str(schema.arguments[i].type).startswith("Optional") for i in k)
    if spec["mutation"] != "shape" or spec["op"] in ("lstm_cell", "gru_cell", "rnn_cell"):
        return False
    if spec["op"].endswith("_backward") or spec.get("packed"):
        return False
    x = args[names.index("input")]
    return (x.dim() == 3 and x.shape[1] == spec["N"] and x.shape[2] == spec["I"]
            and isinstance(args[names.index("h0")], torch.Tensor)
            and args[names.index("h0")].shape == (spec["N"], spec.get("proj", 0) or spec["H"]))


def _flat(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "batch_sizes"):  # PackedSequence
        return [result.data]
    return [t for r in result for t in _flat(r)]


# ---- modules ----------------------------------------------------------------------------------
MODULE_KINDS = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
MODULE_MUTATIONS = ("input_features", "input_ndim", "input_dtype", "input_device",
                    "input_nontensor", "input_no_steps", "hx_shape", "hx_ndim", "hx_dtype",
                    "hx_device", "hx_nontensor", "lstm_hx_arity", "packed_batch_sizes",
                    "lengths")
NONTENSORS = {"int": 3, "float": 2.5, "list": [[1.0, 2.0]], "str": "input", "none": None,
              "tuple": (1, 2)}


def _module_valid(spec: dict):
    import rnnkit

    torch.manual_seed(spec["seed"])
    kind, cell = spec["kind"], spec["kind"].endswith("Cell")
    dtype = DTYPES[spec["dtype"]]
    I, H, N, T = spec["I"], spec["H"], spec["N"], spec["T"]
    if cell:
        m = getattr(rnnkit, kind)(I, H, dtype=dtype)
        x = torch.randn(N, I, dtype=dtype)
        states = [torch.randn(N, H, dtype=dtype) for _ in range(2 if kind == "LSTMCell" else 1)]
        return m, x, states
    extra = {"proj_size": spec["proj"]} if kind == "LSTM" and spec.get("proj") else {}
    m = getattr(rnnkit, kind)(I, H, num_layers=spec["layers"], bidirectional=spec["bi"],
                              batch_first=spec["bf"], dtype=dtype, **extra)
    LD = spec["layers"] * (2 if spec["bi"] else 1)
    x = torch.randn((N, T, I) if spec["bf"] else (T, N, I), dtype=dtype)
    states = [torch.randn(LD, N, spec.get("proj") or H, dtype=dtype)]
    if kind == "LSTM":
        states.append(torch.randn(LD, N, H, dtype=dtype))
    return m, x, states


def _hx(kind: str, states: list):
    return tuple(states) if kind.startswith("LSTM") else states[0]


def module_call(spec: dict):
    """Builds the module, the (bad) arguments of spec, and returns (module, args, packed_by_hand)."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    m, x, states = _module_valid(spec)
    kind, how, p = spec["kind"], spec["mutation"], spec.get("params", {})
    gen = torch.Generator().manual_seed(spec["seed"] + 2)
    which = p.get("which", 0) % len(states)
    if how == "input_features":
        x = torch.randn(*x.shape[:-1], x.shape[-1] + p.get("delta", 1), dtype=x.dtype)
    elif how == "input_ndim":
        ndim = p["ndim"]
        ok = (1, 2) if kind.endswith("Cell") else (2, 3)
        if ndim in ok:
            ndim = ok[-1] + 1
        x = torch.randn(*([2] * max(ndim - 1, 0)), x.shape[-1], dtype=x.dtype) if ndim else torch.tensor(1.0, dtype=x.dtype)
    elif how == "input_dtype":
        target = DTYPES[p["dtype"]]
        if target == x.dtype:
            target = torch.float64 if x.dtype == torch.float32 else torch.float32
        x = x.to(target) if target != torch.bool else x > 0
    elif how == "input_device":
        x = x.to("meta")
    elif how == "input_nontensor":
        x = NONTENSORS[p["value"]]
    elif how == "input_no_steps":
        x = x[:, :0] if spec.get("bf") else x[:0]
    elif how == "hx_shape":
        s = states[which]
        d = p.get("dim", 0) % s.dim()
        shape = list(s.shape)
        shape[d] = shape[d] + p.get("delta", 1) if p.get("delta", 1) > 0 or shape[d] == 0 else 0
        states[which] = torch.randn(shape, dtype=s.dtype)
    elif how == "hx_ndim":
        s = states[which]
        states[which] = s[0] if s.dim() > 1 and p.get("drop", True) else s.unsqueeze(0)
    elif how == "hx_dtype":
        s = states[which]
        target = DTYPES[p["dtype"]]
        if target == s.dtype:
            target = torch.float64 if s.dtype == torch.float32 else torch.float32
        states[which] = s.to(target) if target != torch.bool else s > 0
    elif how == "hx_device":
        states[which] = states[which].to("meta")
    elif how == "hx_nontensor":
        value = NONTENSORS[p["value"]]
        if value is None:  # None alone means "zeros", which is valid: put it inside the tuple
            value = "input"
        states[which] = value
    elif how == "lstm_hx_arity":
        return m, (x, tuple(states[:1]) if p.get("fewer", True) else tuple(states + states[:1])), False
    elif how in ("packed_batch_sizes", "lengths"):
        if spec.get("bf"):
            x = x.transpose(0, 1)
        T, N = x.shape[0], x.shape[1]
        if how == "packed_batch_sizes":
            bs = _batch_sizes(T, N, gen)
            data = torch.randn(int(bs.sum()), x.shape[-1], dtype=x.dtype)
            packed = PackedSequence(data, _break_batch_sizes(bs, p["how"]))
            return m, (packed,), True
        lengths = torch.randint(1, T + 1, (N,), generator=gen).double()
        k = int(p.get("index", 0)) % N
        lengths[k] = {"nan": float("nan"), "negative": -1.0, "zero": 0.0, "inf": float("inf")}.get(p["lengths"], lengths[k])
        if p["lengths"] == "unsorted":  # enforce_sorted=True with increasing lengths
            lengths = torch.arange(1, N + 1).double().clamp(max=T)  # needs N >= 2 and T >= 2
        packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
        return m, (packed,), True
    else:
        raise ValueError(how)
    return m, (x, _hx(kind, states)), False


def run_module_spec(spec: dict) -> dict:
    torch.set_num_threads(1)
    try:
        m, args, by_hand = module_call(spec)
    except Exception as error:  # noqa: BLE001  (torch's pack_padded_sequence refused the lengths)
        return {"outcome": "raised", "type": type(error).__name__, "message": str(error),
                "by": "torch.nn.utils.rnn"}
    try:
        result = m(*args)
    except Exception as error:  # noqa: BLE001
        reply = {"outcome": "raised", "type": type(error).__name__, "message": str(error),
                 "by": "rnnkit"}
        if not by_hand and spec["mutation"] not in ("input_device", "hx_device"):
            # Does torch.nn refuse it too? (Not for hand-made PackedSequences, which can crash
            # torch's own kernels, nor meta tensors, which torch may run as shape inference.)
            try:
                m.to_torch()(*args)
                reply["torch"] = "accepted"
            except Exception as theirs:  # noqa: BLE001
                reply["torch"] = type(theirs).__name__
        return reply
    return {"outcome": "returned", "same_as_valid": False,
            "shapes": [tuple(t.shape) for t in _flat(result)]}


def run_spec(spec: dict) -> dict:
    """Runs one spec in this process (a module spec when spec has "kind", else an operator
    spec). Returns {"outcome": "raised", "type", "message"} or
    {"outcome": "returned", "same_as_valid": bool}, or {"outcome": "valid"} when the mutation
    happened to leave a valid call (not counted)."""
    if "kind" in spec:
        return run_module_spec(spec)
    torch.set_num_threads(1)
    names, args = valid_args(spec)
    fn = getattr(torch.ops.rnnkit, spec["op"])
    bad = mutate(names, args, spec)
    if is_valid_anyway(spec, names, bad):
        return {"outcome": "valid"}
    try:
        result = fn(*bad)
    except Exception as error:  # noqa: BLE001  (any exception with a message is a clean refusal)
        return {"outcome": "raised", "type": type(error).__name__, "message": str(error)}
    same = False
    if spec["mutation"] == "noncontiguous":
        expected = _flat(fn(*args))
        got = _flat(result)
        # Not bitwise: a strided weight takes another BLAS path through at::matmul, which may
        # round differently; a stride bug gives garbage, far outside these bounds.
        tol = dict(rtol=1e-4, atol=1e-5) if spec["dtype"] == "float32" else dict(rtol=1e-10, atol=1e-10)
        same = len(got) == len(expected) and all(
            a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, equal_nan=True, **tol)
            for a, b in zip(got, expected))
    return {"outcome": "returned", "same_as_valid": same,
            "shapes": [tuple(t.shape) for t in _flat(result)],
            "devices": [str(t.device) for t in _flat(result)]}


def _serve(conn) -> None:
    import rnnkit.ops  # noqa: F401  (the operators and their fake implementations)

    while True:
        spec = conn.recv()
        if spec is None:
            return
        if spec.get("harness") == "die":  # for the harness's own test: a crash mid-call
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.get("harness") == "hang":  # ... and a call that never returns
            time.sleep(3600)
        try:
            reply = run_spec(spec)
        except BaseException:  # noqa: BLE001  (a bug in the harness, reported as such)
            reply = {"outcome": "harness_error", "message": traceback.format_exc()}
        conn.send(reply)


class OpWorker:
    """A spawned child that runs specs one at a time. A crash or a hang is reported as an
    outcome ("crashed" with the exit code, or "hung"), and the next call starts a new child."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, spec: dict) -> dict:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send(spec)
        if not self._conn.poll(self.timeout):
            self.close(kill=True)
            return {"outcome": "hung", "timeout": self.timeout}
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(10)
            code = self._proc.exitcode
            self._proc = None
            return {"outcome": "crashed", "exitcode": code}

    def close(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if kill:
            self._proc.kill()
        else:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._proc = None

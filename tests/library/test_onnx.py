"""ONNX export (rnnkit.onnx): onnxruntime runs the exported model, without rnnkit, and matches
torch.nn and rnnkit in float32 to 1e-5 (absolute), at a batch size and a sequence length other
than those it was exported with.

One export per cell kind (LSTM, GRU, RNN-tanh, RNN-relu) of a model that holds two layers, so
that each export covers every option once: 1 layer, unidirectional, batch_first, no initial
state, with biases; and 3 layers, bidirectional, time-first, given initial states, without
biases. Exports take seconds each, so the matrix is covered by combining, not by multiplying.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

NEEDS = 'needs the export extra: pip install "rnnkit[export]"'
onnx = pytest.importorskip("onnx", reason=NEEDS)
pytest.importorskip("onnxscript", reason=NEEDS)
ort = pytest.importorskip("onnxruntime", reason=NEEDS)

import rnnkit  # noqa: E402
import rnnkit.functional as RF  # noqa: E402
import rnnkit.onnx as rko  # noqa: E402

ATOL = 1e-5
I, H = 5, 6
EXPORTED = dict(N=3, T=7)  # the example sizes of the export
OTHER = dict(N=4, T=11)  # the sizes it then runs at
CELLS = {  # name: (class, extra constructor arguments)
    "lstm": ("LSTM", {}), "gru": ("GRU", {}), "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


class TwoLayers(nn.Module):
    """(a) 1 layer, unidirectional, batch_first, biases, no initial state, on x_bf (N, T, I);
    (b) 3 layers, bidirectional, time-first, no biases, given initial states, on x_tf (T, N, I).
    forward(x_bf, x_tf, h0, c0=None) returns a's output and final states, then b's."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x_bf, x_tf, h0, c0=None):
        ya, sa = self.a(x_bf)
        yb, sb = self.b(x_tf, h0 if c0 is None else (h0, c0))
        flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
        return (ya, *flat(sa), yb, *flat(sb))


def _models(cell: str) -> tuple[nn.Module, nn.Module]:
    """rnnkit's TwoLayers and torch.nn's, with the same weights."""
    kind, extra = CELLS[cell]
    torch.manual_seed(0)
    a = getattr(nn, kind)(I, H, batch_first=True, **extra)
    b = getattr(nn, kind)(I, H, num_layers=3, bidirectional=True, bias=False, **extra)
    theirs = TwoLayers(a, b).eval()
    ours = TwoLayers(rnnkit.from_torch(a), rnnkit.from_torch(b)).eval()
    return ours, theirs


def _inputs(cell: str, N: int, T: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    states = 2 if cell == "lstm" else 1
    return (torch.randn(N, T, I, generator=g), torch.randn(T, N, I, generator=g),
            *(torch.randn(6, N, H, generator=g) for _ in range(states)))


def _dynamic(cell: str) -> dict:
    """Batch and sequence length dynamic (dynamic_shapes by argument name)."""
    dims = {"x_bf": {0: "N", 1: "T"}, "x_tf": {0: "T", 1: "N"}, "h0": {1: "N"}}
    return {**dims, "c0": {1: "N"}} if cell == "lstm" else dims


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """cell -> (path of the .onnx file, rnnkit model, torch.nn model); one export per cell."""
    done = {}

    def get(cell: str):
        if cell not in done:
            ours, theirs = _models(cell)
            path = tmp_path_factory.mktemp("onnx") / f"{cell}.onnx"
            rko.export(ours, _inputs(cell, **EXPORTED, seed=1), str(path),
                       dynamic_shapes=_dynamic(cell))
            done[cell] = (path, ours, theirs)
        return done[cell]

    return get


def _run_ort(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), f"the ONNX model takes {names}, {len(inputs)} inputs given"
    outputs = session.run(None, dict(zip(names, (x.numpy() for x in inputs))))
    return [torch.from_numpy(y) for y in outputs]


def _assert_close(got, want, what):
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what}, output {k}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        err = (g - w).abs().max().item()
        assert err <= ATOL, f"{what}, output {k}: max abs error {err:.3g} > {ATOL}"


@pytest.mark.parametrize("cell", list(CELLS))
def test_onnxruntime_matches_torch_nn_and_rnnkit(cell, exported):
    path, ours, theirs = exported(cell)
    model = onnx.load(str(path))
    domains = {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard operator domains in the export: {domains}"
    onnx_op = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    assert sum(n.op_type == onnx_op for n in model.graph.node) == 1 + 3 * 2, \
        f"expected one ONNX {onnx_op} node per layer and direction"
    for sizes in (OTHER, EXPORTED):
        inputs = _inputs(cell, **sizes, seed=2)
        got = _run_ort(path, inputs)
        with torch.no_grad():
            _assert_close(got, list(theirs(*inputs)), f"{cell} {sizes} vs torch.nn")
            _assert_close(got, list(ours(*inputs)), f"{cell} {sizes} vs rnnkit")


def test_onnx_model_runs_where_rnnkit_and_torch_cannot_be_imported(exported, tmp_path):
    """The deployment case: a process with onnxruntime and numpy only."""
    path, ours, _ = exported("lstm")
    inputs = _inputs("lstm", **OTHER, seed=3)
    with torch.no_grad():
        want = [y.numpy() for y in ours(*inputs)]
    np.savez(tmp_path / "io.npz", *[x.numpy() for x in inputs])
    np.savez(tmp_path / "want.npz", *want)
    child = textwrap.dedent(f"""
        import sys
        sys.modules["rnnkit"] = None  # import rnnkit (or torch) now raises ImportError
        sys.modules["torch"] = None
        import numpy as np, onnxruntime as ort
        for name in ("rnnkit", "torch"):
            try:
                __import__(name)
                raise SystemExit(name + " could be imported")
            except ImportError:
                pass
        io, want = np.load({str(tmp_path / "io.npz")!r}), np.load({str(tmp_path / "want.npz")!r})
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {{n: io[f"arr_{{k}}"] for k, n in enumerate(names)}})
        err = max(float(np.abs(g - want[f"arr_{{k}}"]).max()) for k, g in enumerate(got))
        print(len(got), err)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    count, err = done.stdout.split()
    assert int(count) == len(want) and float(err) <= ATOL, done.stdout


def test_packed_input_exports_through_sequence_lens(tmp_path):
    """rnnkit.functional with packed input (P, I), batch_sizes and initial states as model
    inputs: the export pads to (T, N, I) with ONNX's sequence_lens and packs the output back.
    Reverse directions start at each sequence's own end, as in torch.nn."""
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True).eval()
    ours = rnnkit.from_torch(theirs).eval()

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = ours

        def forward(self, data, batch_sizes, h0, c0):
            out, (h, c) = RF.lstm(data, (h0, c0), self.lstm._layer_params(), num_layers=2,
                                  bidirectional=True, batch_sizes=batch_sizes)
            return out, h, c

    def packed_inputs(lengths, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(max(lengths), len(lengths), I, generator=g)
        packed = pack_padded_sequence(x, torch.tensor(lengths))
        states = [torch.randn(4, len(lengths), H, generator=g) for _ in range(2)]
        return packed, (packed.data, packed.batch_sizes, *states)

    _, example = packed_inputs([6, 4, 4], 1)
    path = tmp_path / "packed.onnx"
    rko.export(Packed().eval(), example, str(path),
               dynamic_shapes=({0: "P"}, {0: "T"}, {1: "N"}, {1: "N"}))
    packed, inputs = packed_inputs([9, 8, 5, 5, 1], 2)
    got = _run_ort(path, inputs)
    with torch.no_grad():
        out, (h, c) = theirs(packed, (inputs[2], inputs[3]))
        _assert_close(got, [out.data, h, c], "packed vs torch.nn")
        _assert_close(got, list(Packed()(*inputs)), "packed vs rnnkit")


def test_cells_through_torch_onnx_export_and_translation_table(tmp_path):
    """rnnkit's cells (one ONNX node of one step each), exported with torch.onnx.export and
    rnnkit.onnx.translation_table(): the path for users who call the exporter themselves."""
    torch.manual_seed(0)
    cells = [nn.LSTMCell(I, H), nn.GRUCell(I, H), nn.RNNCell(I, H, nonlinearity="relu"),
             nn.RNNCell(I, H, bias=False)]

    class Cells(nn.Module):
        def __init__(self, cells) -> None:
            super().__init__()
            self.cells = nn.ModuleList(cells)

        def forward(self, x, h, c):
            lstm, gru, relu, tanh = self.cells
            return (*lstm(x, (h, c)), gru(x, h), relu(x, h), tanh(x))

    theirs = Cells(cells).eval()
    ours = Cells([rnnkit.from_torch(c) for c in cells]).eval()
    g = torch.Generator().manual_seed(1)
    example = [torch.randn(3, n, generator=g) for n in (I, H, H)]
    path = tmp_path / "cells.onnx"
    n = torch.export.Dim("N")
    torch.onnx.export(ours, tuple(example), str(path), dynamo=True, verbose=False,
                      custom_translation_table=rko.translation_table(),
                      dynamic_shapes=({0: n}, {0: n}, {0: n}))
    inputs = [torch.randn(5, n, generator=g) for n in (I, H, H)]
    got = _run_ort(path, inputs)
    with torch.no_grad():
        _assert_close(got, list(theirs(*inputs)), "cells vs torch.nn")


def test_lstm_projection_is_refused_in_one_line():
    model = rnnkit.LSTM(I, H, proj_size=3).eval()
    with pytest.raises(rko.UnsupportedForONNX, match="proj_size") as error:
        rko.export(model, (torch.randn(4, 2, I),))
    assert "\n" not in str(error.value)


def test_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "rnnkit\[export\]"') as error:
        rko.export(rnnkit.GRU(I, H), (torch.randn(4, 2, I),))
    assert "\n" not in str(error.value)

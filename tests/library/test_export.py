"""torch.export and AOTInductor on models with rnnkit layers: the exported program, its saved
and loaded copy, and a compiled AOTInductor package give eager's results, at a batch size and a
sequence length other than the example's; the loading side needs rnnkit's operators registered.

AOTInductor compiles C++ (tens of seconds on a busy 2-core machine), so one package is compiled
for the module, from one model that holds an LSTM (2 layers, bidirectional, batch_first, given
states), a GRU (no state) and a ReLU RNN.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.functional as RF

I, H = 4, 6


class Stack(nn.Module):
    """x (N, T, I), h0 and c0 (4, N, H) -> LSTM (2 layers, bidirectional, batch_first) -> GRU
    (time-first, no state) -> ReLU RNN -> linear. Returns (logits (T, N, 3), h_n, c_n, gru h_n)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = rnnkit.GRU(2 * H, H)
        self.rnn = rnnkit.RNN(H, H, nonlinearity="relu")
        self.head = nn.Linear(H, 3)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        z, hz = self.gru(y.transpose(0, 1))
        r, _ = self.rnn(z)
        return self.head(r), h, c, hz


def _inputs(N: int, T: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, T, I, generator=g), torch.randn(4, N, H, generator=g),
            torch.randn(4, N, H, generator=g))


def _model() -> Stack:
    torch.manual_seed(0)
    return Stack().eval()


def _export(model: nn.Module) -> torch.export.ExportedProgram:
    """Exported under no_grad (the inference form: the layers keep no workspace), with the batch
    and the sequence length dynamic."""
    N, T = torch.export.Dim("N"), torch.export.Dim("T")
    with torch.no_grad():
        return torch.export.export(model, _inputs(3, 7, 1),
                                   dynamic_shapes=({0: N, 1: T}, {1: N}, {1: N}))


def _assert_equal(got, want, what):
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what}, output {k}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        diff = (g - w).abs().max().item()
        assert torch.equal(g, w), f"{what}, output {k}: max abs difference {diff:.3g}"


def _rnnkit_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    return [n for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("rnnkit.")]


def _arguments(node: torch.fx.Node) -> dict:
    """A node's arguments by schema name, defaults included."""
    schema = node.target._schema.arguments
    args = {a.name: a.default_value for a in schema if a.has_default_value()}
    args.update(zip((a.name for a in schema), node.args))
    return {**args, **node.kwargs}


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    return _export(_model())


def test_exported_program_keeps_rnnkit_operators_in_inference_form(program):
    nodes = _rnnkit_nodes(program)
    names = sorted(str(n.target) for n in nodes)
    assert names == ["rnnkit.gru.default"] + ["rnnkit.lstm.default"] * 4 + ["rnnkit.rnn.default"]
    for n in nodes:
        train = _arguments(n).get("train", False)  # rnnkit::rnn keeps no workspace at all
        assert train is False, f"{n.target} exported under no_grad with train={train}"


def test_exported_program_and_its_saved_copy_equal_eager(program, tmp_path):
    model = _model()
    path = tmp_path / "stack.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path))
    for sizes in ((5, 11), (3, 7), (1, 2)):
        inputs = _inputs(*sizes, seed=2)
        with torch.no_grad():
            want = list(model(*inputs))
            _assert_equal(list(program.module()(*inputs)), want, f"exported program {sizes}")
            _assert_equal(list(loaded.module()(*inputs)), want, f"saved and loaded {sizes}")


def test_packed_input_through_functional_exports():
    """Packed input exports where torch.export can trace it: rnnkit.functional with the packed
    data, batch_sizes and the initial states as inputs (a module that packs inside forward, or
    is given a PackedSequence without states, reads batch_sizes[0] as a Python int, which
    torch.export refuses for torch.nn's layers too)."""
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True).eval()

    class Packed(nn.Module):
        def forward(self, data, batch_sizes, h0, c0):
            out, (h, c) = RF.lstm(data, (h0, c0), lstm._layer_params(), num_layers=2,
                                  bidirectional=True, batch_sizes=batch_sizes)
            return out, h, c

    def packed_inputs(lengths, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(max(lengths), len(lengths), I, generator=g)
        packed = pack_padded_sequence(x, torch.tensor(lengths))
        return (packed.data, packed.batch_sizes,
                *(torch.randn(4, len(lengths), H, generator=g) for _ in range(2)))

    P, T, N = torch.export.Dim("P"), torch.export.Dim("T"), torch.export.Dim("N")
    with torch.no_grad():
        program = torch.export.export(Packed(), packed_inputs([6, 4, 4], 1),
                                      dynamic_shapes=({0: P}, {0: T}, {1: N}, {1: N}))
        inputs = packed_inputs([9, 8, 5, 5, 1], 2)
        _assert_equal(list(program.module()(*inputs)), list(Packed()(*inputs)), "packed")


def test_aoti_package_equals_eager_and_loads_where_rnnkit_is_imported(program, tmp_path):
    """One AOTInductor compile. The package runs rnnkit's compiled kernels: a fresh process
    cannot load it until rnnkit's operators are registered (import rnnkit.ops), then it can."""
    model = _model()
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "stack.pt2"))
    package = torch._inductor.aoti_load_package(path)
    inputs = _inputs(5, 11, seed=3)
    with torch.no_grad():
        want = list(model(*inputs))
    _assert_equal(list(package(*inputs)), want, "AOTInductor package in this process")

    torch.save({"inputs": inputs, "want": want}, tmp_path / "io.pt")
    child = textwrap.dedent(f"""
        import torch
        try:
            torch._inductor.aoti_load_package({path!r})
            raise SystemExit("the package loaded before rnnkit's operators were registered")
        except RuntimeError as error:
            assert "rnnkit::" in str(error), str(error)
        import rnnkit.ops  # registers torch.ops.rnnkit (the compiled library, rnnkit._C)
        package = torch._inductor.aoti_load_package({path!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        got = package(*io["inputs"])
        print(all(torch.equal(g, w) for g, w in zip(got, io["want"])))
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "True", done.stdout

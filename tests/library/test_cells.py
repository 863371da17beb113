"""rnnkit.RNNCell / LSTMCell / GRUCell against torch.nn's cells and the reference."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import functional as F
from rnnkit import reference as R

from ..helpers import compare, twins

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]
IDS = [f"{k}{'-' + e['nonlinearity'] if e else ''}" for k, e in CELLS]


def _state(kind, shape, dtype):
    h = torch.randn(shape, dtype=dtype, requires_grad=True)
    return (h, torch.randn(shape, dtype=dtype, requires_grad=True)) if kind == "LSTMCell" else h


@pytest.mark.parametrize("kind,extra", CELLS, ids=IDS)
@pytest.mark.parametrize("N,H", [(1, 1), (1, 3), (4, 17), (2, 129), (64, 20)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch(kind, extra, N, H, dtype, bias):
    theirs, ours = twins(kind, 5, H, bias=bias, dtype=dtype, **extra)
    x = torch.randn(N, 5, dtype=dtype, requires_grad=True)
    compare(theirs, ours, [x], dtype)  # hx=None: zeros
    compare(theirs, ours, [x, _state(kind, (N, H), dtype)], dtype)


@pytest.mark.parametrize("kind,extra", CELLS, ids=IDS)
def test_unbatched_cell(kind, extra):
    theirs, ours = twins(kind, 5, 7, dtype=torch.float64, **extra)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    compare(theirs, ours, [x], torch.float64)
    compare(theirs, ours, [x, _state(kind, (7,), torch.float64)], torch.float64)


def test_functional_cells_match_reference():
    g = torch.Generator().manual_seed(0)
    x, h, c = (torch.randn(3, n, dtype=torch.float64, generator=g) for n in (4, 6, 6))
    w = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    wi, wh, bi, bh = w(24, 4), w(24, 6), w(24), w(24)
    for a, b in zip(F.lstm_cell(x, (h, c), wi, wh, bi, bh), R.lstm_cell(x, h, c, wi, wh, bi, bh)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    wi, wh, bi, bh = w(18, 4), w(18, 6), w(18), w(18)
    torch.testing.assert_close(F.gru_cell(x, h, wi, wh, bi, bh), R.gru_cell(x, h, wi, wh, bi, bh))
    wi, wh = w(6, 4), w(6, 6)
    for act in ("tanh", "relu"):
        torch.testing.assert_close(F.rnn_cell(x, h, wi, wh, None, None, act),
                                   R.rnn_cell(x, h, wi, wh, None, None, act))


def test_compiled_cell_loop_matches_eager():
    """torch.compile(fullgraph=True) over a short loop of cells: no graph break, same values."""
    cell = rnnkit.LSTMCell(6, 8)
    gru = rnnkit.GRUCell(8, 8)

    def run(x, h, c):
        for t in range(x.shape[0]):
            h, c = cell(x[t], (h, c))
            h = gru(h, h)
        return h, c

    x = torch.randn(4, 3, 6, requires_grad=True)
    h0, c0 = torch.zeros(3, 8), torch.zeros(3, 8)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    eager = run(x, h0, c0)
    got = compiled(x, h0, c0)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(got[0].sum(), [x] + list(cell.parameters()))
    gb = torch.autograd.grad(eager[0].sum(), [x] + list(cell.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)

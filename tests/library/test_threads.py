"""Two Python threads calling the same module at once get what sequential calls get.

The operators release the GIL while they run, so the two threads really are in the kernels at
the same time; the kernels keep no global mutable state (every buffer is allocated per call), so
nothing one thread writes can reach the other's results.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

REPEATS = 8

MODULES = {
    "LSTM": lambda: rnnkit.LSTM(6, 24, num_layers=2, bidirectional=True, dtype=torch.float64),
    "LSTM-proj": lambda: rnnkit.LSTM(6, 24, proj_size=5, dtype=torch.float64),
    "GRU": lambda: rnnkit.GRU(6, 24, num_layers=2, bidirectional=True, dtype=torch.float64),
    "RNN": lambda: rnnkit.RNN(6, 24, num_layers=2, nonlinearity="relu", dtype=torch.float64),
    "LSTMCell": lambda: rnnkit.LSTMCell(6, 24, dtype=torch.float64),
    "GRUCell": lambda: rnnkit.GRUCell(6, 24, dtype=torch.float64),
    "RNNCell": lambda: rnnkit.RNNCell(6, 24, dtype=torch.float64),
}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _work(module, x: torch.Tensor, packed: bool) -> list[torch.Tensor]:
    """Forward and backward (torch.autograd.grad, so nothing accumulates into .grad, which the
    threads share); returns outputs and gradients."""
    x = x.detach().requires_grad_()
    arg = x
    if packed:
        lengths = torch.linspace(x.shape[0], 1, x.shape[1]).long()
        arg = pack_padded_sequence(x, lengths, enforce_sorted=True)
    out = module(arg)
    out = out if isinstance(out, tuple) else (out,)
    flat = [t for o in out for t in (o if type(o) is tuple else (o,))]
    flat = [t.data if isinstance(t, PackedSequence) else t for t in flat]
    grads = torch.autograd.grad([t.sum() for t in flat], [x, *module.parameters()])
    return [t.detach() for t in flat] + list(grads)


@pytest.mark.parametrize("kind", list(MODULES))
def test_two_threads_match_sequential_calls(kind):
    torch.manual_seed(0)
    module = MODULES[kind]()
    cell = kind.endswith("Cell")
    packed = kind in ("LSTM", "GRU")
    shape = (16, 6) if cell else (40, 5, 6)
    inputs = [torch.randn(shape, dtype=torch.float64) for _ in range(2)]
    expected = [_work(module, x, packed) for x in inputs]

    results: list[list] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(REPEATS):
                results[k].append(_work(module, inputs[k], packed))
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish within 120 s"
    assert not errors, errors
    for k in range(2):
        assert len(results[k]) == REPEATS
        for r, got in enumerate(results[k]):
            for j, (a, b) in enumerate(zip(got, expected[k])):
                assert torch.equal(a, b), (
                    f"{kind}: thread {k}, call {r}, result {j} differs from the sequential call "
                    f"(max |diff| {(a - b).abs().max().item():.3g})")

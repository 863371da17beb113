"""Many forward+backward calls keep the process's resident memory flat.

Each call below allocates about a megabyte that the kernels must give back (outputs, workspace,
gradients), so a leak of any of it would grow resident memory by tens to hundreds of megabytes
over the loop, past the bound of 12 MiB. The bound is absolute: the process's resident memory
before the loop depends on what ran before it in the test session. tools/leak_check.py runs the same loop 1,000 times per layer kind and
prints the figures.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import rnnkit

WARMUP, CALLS = 30, 200
BOUND = 12 * 2**20  # bytes of growth over CALLS calls

# (constructor, input shape): big enough that one leaked workspace is visible in RSS.
KINDS = {
    "LSTM": (lambda: rnnkit.LSTM(32, 64, num_layers=2, bidirectional=True), (40, 16, 32)),
    "LSTM-proj": (lambda: rnnkit.LSTM(32, 64, proj_size=16, bidirectional=True), (40, 16, 32)),
    "GRU": (lambda: rnnkit.GRU(32, 64, num_layers=2, bidirectional=True), (40, 16, 32)),
    "RNN": (lambda: rnnkit.RNN(32, 64, num_layers=2, nonlinearity="relu"), (40, 16, 32)),
    "LSTMCell": (lambda: rnnkit.LSTMCell(32, 256), (64, 32)),
    "GRUCell": (lambda: rnnkit.GRUCell(32, 256), (64, 32)),
    "RNNCell": (lambda: rnnkit.RNNCell(32, 256), (64, 32)),
}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def step(module, x: torch.Tensor, packed: bool = False) -> torch.Tensor:
    """One forward+backward; returns the output, detached (dropped by the caller unless it
    means to leak it)."""
    x = x.detach().requires_grad_()
    arg = x
    if packed:
        lengths = torch.arange(x.shape[1], 0, -1).clamp(min=1) * x.shape[0] // x.shape[1]
        arg = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1), enforce_sorted=True)
    out = module(arg)
    out = out[0] if isinstance(out, tuple) else out
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    loss = out.square().mean()
    loss.backward()
    module.zero_grad(set_to_none=True)
    return out.detach()


def measure(module, x, calls: int, warmup: int, packed: bool = False, keep: list | None = None):
    """RSS after warm-up and after `calls` more calls. `keep`, when given, collects each call's
    output: a deliberate leak, to check that the measurement sees one."""
    for _ in range(warmup):
        step(module, x, packed)
    gc.collect()
    before = rss_bytes()
    for _ in range(calls):
        out = step(module, x, packed)
        if keep is not None:
            keep.append(out)
    gc.collect()
    return before, rss_bytes()


@pytest.mark.parametrize("kind", list(KINDS))
def test_resident_memory_stays_flat(kind):
    torch.manual_seed(0)
    make, shape = KINDS[kind]
    module = make()
    x = torch.randn(shape)
    packed = kind in ("LSTM", "GRU")  # the packed path too, for the layers that allow it cheaply
    before, after = measure(module, x, CALLS, WARMUP, packed=packed)
    assert after - before <= BOUND, (f"{kind}: resident memory grew by "
                                     f"{(after - before) / 2**20:.1f} MiB over {CALLS} calls "
                                     f"({before / 2**20:.1f} -> {after / 2**20:.1f} MiB)")


def test_the_measurement_sees_a_leak():
    """Keeping every output (as a leak would: 320 KiB a call) must fail the bound above:
    otherwise the bound checks nothing."""
    torch.manual_seed(0)
    make, shape = KINDS["LSTM"]
    module = make()
    x = torch.randn(shape)
    kept: list = []
    before, after = measure(module, x, CALLS, 5, keep=kept)
    assert after - before > BOUND, (before, after)
    kept.clear()

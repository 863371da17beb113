"""The small-batch recurrent path (N <= 16): every step of a chunk runs in one parallel region,
each thread on its own hidden units, with the state double-buffered between steps. The final
state of a packed sequence is in the buffer of its last step's parity, so lengths of both
parities, both directions, several thread counts and the limit N = 16 (against N = 17, the BLAS
path) are checked against torch.nn in float64."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ..helpers import tensors_of, twins


@pytest.mark.parametrize("intra_op_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("N", [1, 5, 16, 17])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_small_batch_path_matches_torch(intra_op_threads, kind, N, grad):
    theirs, ours = twins(kind, 3, 19, bidirectional=True, seed=N)
    gen = torch.Generator().manual_seed(100 * N + intra_op_threads)
    T = 12
    # lengths of both parities, the longest first, down to a single step
    lengths = torch.tensor([T] + [1 + (T - 1 - k) % T for k in range(N - 1)])
    lengths = lengths.sort(descending=True).values
    x = torch.randn(T, N, 3, dtype=torch.float64, generator=gen)
    for inp in (x, pack_padded_sequence(x, lengths, enforce_sorted=True)):
        with torch.set_grad_enabled(grad):
            got, want = ours(inp), theirs(inp)
        for a, b in zip(tensors_of(got), tensors_of(want)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

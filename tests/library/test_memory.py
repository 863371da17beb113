"""The CPU kernels' cache of large buffers (csrc/cpu/memory.h): blocks of 4 MiB and more freed by
one call are reused by the next, which must not see their old contents, and the cache is
bounded and can be turned off (RNNKIT_CPU_CACHE_MB=0)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ..helpers import twins
from .test_leaks import rss_bytes, step

# T=100, N=32, H=128: the LSTM workspace (P x 5H floats) is 8 MiB and the gate gradients 6.5 MiB,
# so both go through the cache.
SHAPE = (100, 32, 64)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_reused_blocks_give_the_same_results_as_fresh_ones(kind):
    theirs, ours = twins(kind, 64, 128, dtype=torch.float32)
    for seed in range(3):  # the second and third calls run in blocks the first one freed
        x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(seed))
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_t, out_o = theirs(a)[0], ours(b)[0]
        torch.testing.assert_close(out_o, out_t, rtol=1e-5, atol=1e-5)
        out_t.square().mean().backward()
        out_o.square().mean().backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)
        for (name, p), q in zip(theirs.named_parameters(), ours.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
        theirs.zero_grad(), ours.zero_grad()


def test_resident_memory_stays_flat_with_the_cache(one_intra_op_thread):
    import rnnkit

    module = rnnkit.LSTM(64, 128)
    x = torch.randn(*SHAPE)
    for _ in range(5):
        step(module, x)
    before = rss_bytes()
    for _ in range(40):
        step(module, x)
    growth = rss_bytes() - before
    # one call's large buffers come to about 25 MiB; a cache that kept each call's blocks
    # (or a leak) would grow by far more over 40 calls
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 40 calls"


_CHILD = textwrap.dedent("""
    import torch, rnnkit
    torch.manual_seed(0)
    m = rnnkit.LSTM(64, 128)
    x = torch.randn(100, 32, 64, requires_grad=True)
    for _ in range(2):
        out = m(x)[0]
        out.square().mean().backward()
    print(repr(out.sum().item()), repr(x.grad.sum().item()))
""")


def test_cache_off_gives_identical_results():
    def run(env_value):
        env = dict(os.environ, RNNKIT_CPU_CACHE_MB=env_value, OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert run("0") == run("1024")

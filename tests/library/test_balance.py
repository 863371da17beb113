"""The split of the CPU's balanced parallel loops (csrc/cpu/balance.h): shares that follow each
thread's rate, and results that do not depend on the split.

rnnkit_testing::balanced_split simulates runs of a loop on threads that take given seconds per
item and returns the split the rates have learned.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit

rnnkit.build_info()  # loads the compiled operators, rnnkit_testing's too


def split(n: int, grain: int, cost: list[float], rounds: int, then: list[float] = (),
          rounds_then: int = 0) -> list[int]:
    """The bounds of the threads' shares of n items after `rounds` runs in which thread t takes
    cost[t] seconds per item, then `rounds_then` runs at the costs `then`."""
    runs = list(cost) * rounds + list(then) * rounds_then
    return list(torch.ops.rnnkit_testing.balanced_split(n, grain, len(cost), runs))


def _check_shape(bounds: list[int], n: int, grain: int, team: int) -> None:
    assert len(bounds) == team + 1 and bounds[0] == 0 and bounds[-1] == n
    assert all(a <= b for a, b in zip(bounds, bounds[1:])), bounds
    assert all(b % grain == 0 for b in bounds[1:-1]), bounds
    if n >= team * grain:
        assert all(b - a >= grain for a, b in zip(bounds, bounds[1:])), bounds


@pytest.mark.parametrize("team", [2, 3, 4])
def test_equal_threads_split_evenly(team):
    n, grain = 96, 2
    for rounds in (0, 1, 40):
        bounds = split(n, grain, [1e-3] * team, rounds)
        _check_shape(bounds, n, grain, team)
        shares = [b - a for a, b in zip(bounds, bounds[1:])]
        assert max(shares) - min(shares) <= grain, (rounds, bounds)


@pytest.mark.parametrize("cost", [[1.0, 2.0], [2.0, 1.0], [1.0, 1.0, 2.0, 4.0], [3.0, 1.0, 1.5]])
def test_shares_follow_the_threads_rates(cost):
    """After enough runs each thread's share is proportional to its rate (1 / cost), to within
    a grain or two: the time of the slowest share, which a step waits for, is then close to the
    best any split can do."""
    n, grain, team = 240, 2, len(cost)
    bounds = split(n, grain, [c * 1e-4 for c in cost], rounds=60)
    _check_shape(bounds, n, grain, team)
    rates = [1 / c for c in cost]
    for t in range(team):
        want = n * rates[t] / sum(rates)
        assert abs((bounds[t + 1] - bounds[t]) - want) <= 2 * grain, (t, bounds, want)
    slowest = max((b - a) * c for a, b, c in zip(bounds, bounds[1:], cost))
    assert slowest <= 1.05 * n / sum(rates) + 2 * grain * max(cost), bounds


def test_a_very_slow_thread_keeps_a_share():
    """Rates count at most 4x the mean, so even a thread 100x slower keeps some work, and is
    timed again on the next run (a thread with nothing to do could never show that it sped up)."""
    bounds = split(64, 4, [1e-4, 1e-2], rounds=100)
    _check_shape(bounds, 64, 4, 2)
    assert 4 <= bounds[2] - bounds[1] <= 16, bounds


def test_the_split_recovers_when_a_thread_speeds_up():
    """Rates are re-learned from every run: a thread that was slow for a while gets its share
    back once it runs as fast as the others, within a few dozen runs (a layer's steps)."""
    assert split(128, 2, [1e-4, 3e-4], rounds=40)[1] >= 88
    back = split(128, 2, [1e-4, 3e-4], rounds=40, then=[1e-4, 1e-4], rounds_then=30)
    assert abs(back[1] - 64) <= 2, back


def test_fewer_items_than_threads():
    assert split(3, 2, [1e-4, 1e-4], rounds=5) in ([0, 2, 3], [0, 3, 3], [0, 0, 3])
    _check_shape(split(1, 1, [1e-4, 1e-4, 1e-4], rounds=3), 1, 1, 3)
    assert split(0, 1, [1e-4, 1e-4], rounds=2) == [0, 0, 0]


def test_bad_arguments_are_refused():
    run = torch.ops.rnnkit_testing.balanced_split
    with pytest.raises(RuntimeError, match="expected 1 to 64 threads, got 0"):
        run(8, 1, 0, [])
    with pytest.raises(RuntimeError, match="grain >= 1"):
        run(8, 0, 2, [1.0, 1.0])
    with pytest.raises(RuntimeError, match="a multiple of 2 values, got 3"):
        run(8, 1, 2, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("intra_op_threads", [2], indirect=True)
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_results_do_not_depend_on_the_split(cell, dtype, intra_op_threads):
    """Each output of a balanced loop is computed whole by one thread, so calls whose splits
    differ (the rates are learned anew in every call, from timings that differ) agree bit for
    bit; with two threads, at a batch above the small-batch path (the loops it balances)."""
    torch.manual_seed(0)
    module = getattr(rnnkit, cell)(40, 128, dtype=dtype)
    x = torch.randn(30, 48, 40, dtype=dtype, requires_grad=True)
    runs = []
    for _ in range(4):
        out, _ = module(x)
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        runs.append((out.detach(), grad))
    for out, grad in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grad, runs[0][1])

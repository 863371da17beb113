"""The plan of the persistent CUDA kernels (csrc/common/persistent.h), checked on every machine
through rnnkit._C: the same inline functions the kernels and their launcher compile.

What must hold: the blocks' unit ranges cover every hidden unit exactly once, no block is empty,
the blocks fit on the device at once, the shared memory asked for stays within the limit and holds
the weight slice and at least one tile of staged rows, and shapes that cannot fit are refused.
And the choice RNNKIT_CUDA_PERSISTENT=auto makes: only shapes where the measured table (run1 on an
H200) shows the persistent loop clearly ahead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rnnkit._library  # noqa: F401  (loads rnnkit._C)
from rnnkit import _C

TILE = 4  # persistent::kTileRows
H200 = dict(max_blocks=132, smem_limit=232448)  # 132 SMs, 227 KiB per block (opt-in)


def plan(H, N, gates, elem_bytes, backward, max_blocks=H200["max_blocks"],
         smem_limit=H200["smem_limit"]):
    return _C.persistent_plan(H, N, gates, elem_bytes, backward, max_blocks, smem_limit)


SHAPES = [(H, N, gates, elem, backward)
          for H in (1, 3, 17, 129, 256, 768, 1024)
          for N in (1, 5, 16, 64)
          for gates in (1, 3, 4)
          for elem in (2, 4, 8)
          for backward in (False, True)]


@pytest.mark.parametrize("H, N, gates, elem, backward", SHAPES)
def test_plan_partition_and_memory(H, N, gates, elem, backward):
    p = plan(H, N, gates, elem, backward)
    if not p["fits"]:
        # Refused only when even the weight slice and one tile of rows exceed the limit.
        units = -(-H // H200["max_blocks"])
        row = (gates * H if backward else H) * elem
        weights = -(-units * gates * H * elem // 16) * 16
        assert weights + TILE * row > H200["smem_limit"], p
        return
    assert 1 <= p["blocks"] <= H200["max_blocks"]
    owned = []
    for b in range(p["blocks"]):
        first, count = _C.persistent_units(H, p["units"], b)
        assert count >= 1, (b, p)  # no block idles through the whole sequence
        owned += range(first, first + count)
    assert sorted(owned) == list(range(H))  # every unit exactly once
    assert _C.persistent_units(H, p["units"], p["blocks"]) == (p["blocks"] * p["units"], 0)
    assert p["weight_bytes"] == p["units"] * gates * H * elem
    row = (gates * H if backward else H) * elem
    assert p["chunk"] % TILE == 0 and TILE <= p["chunk"] <= -(-N // TILE) * TILE
    assert p["smem_bytes"] >= p["weight_bytes"] + p["chunk"] * row
    assert p["smem_bytes"] <= H200["smem_limit"]


def test_plan_stages_the_whole_batch_when_it_fits():
    p = plan(768, 16, 4, 2, False)
    assert p["fits"] and p["chunk"] == 16 and p["units"] == 6 and p["blocks"] == 128


def test_plan_chunks_a_batch_too_large_for_shared_memory():
    # LSTM backward, H = 1024 in float32: the weight slice takes 128 KiB, a staged row 16 KiB.
    p = plan(1024, 64, 4, 4, True)
    assert p["fits"] and p["chunk"] < 64
    assert p["smem_bytes"] + 16 * 1024 * TILE > H200["smem_limit"]  # one more tile would not fit


@pytest.mark.parametrize("H, gates, elem, backward", [(1024, 4, 8, False), (1024, 4, 8, True),
                                                      (4096, 4, 2, False), (2048, 3, 4, True)])
def test_plan_refuses_what_cannot_fit(H, gates, elem, backward):
    p = plan(H, 16, gates, elem, backward)
    assert not p["fits"]
    assert "shared memory" in p["reason"] or "room" in p["reason"]


def test_plan_refuses_empty_shapes_and_no_blocks():
    assert plan(0, 4, 4, 4, False)["reason"] == "empty shape"
    assert plan(8, 0, 4, 4, False)["reason"] == "empty shape"
    assert plan(8, 4, 4, 4, False, max_blocks=0)["reason"] == "no resident blocks"


def test_plan_uses_few_blocks_for_few_units():
    p = plan(3, 1, 4, 4, False)
    assert p["blocks"] == 3 and p["units"] == 1
    p = plan(129, 1, 4, 4, False)  # 129 units over 132 SMs: one each, three SMs idle
    assert p["blocks"] == 129 and p["units"] == 1
    p = plan(133, 1, 4, 4, False)  # one more than the SMs: two units a block
    assert p["units"] == 2 and p["blocks"] == 67


def test_persistent_units_rejects_bad_arguments():
    with pytest.raises(ValueError, match="H > 0"):
        _C.persistent_units(0, 1, 0)


# ---- the choice of RNNKIT_CUDA_PERSISTENT=auto ----------------------------------------------
RUN1 = (Path(__file__).resolve().parents[2] / "benchmarks" / "results"
        / "NVIDIA-H200-2026-11-30" / "run1" / "persistent.json")


def _measured_grid() -> dict[tuple[int, int], tuple[float, float]]:
    """(N, H) -> (forward, forward+backward) time ratios persistent / general of run1's LSTM grid
    (float16, T = 256): the measurements the rule is drawn from."""
    grid = json.loads(RUN1.read_text())["grid"]
    times = {(c["N"], c["H"], c["impl"]): (c["fwd_ms"], c["fwd_bwd_ms"]) for c in grid}
    return {(N, H): tuple(p / g for p, g in zip(times[N, H, "persistent"], times[N, H, "general"]))
            for (N, H, impl) in times if impl == "persistent"}


def test_auto_picks_the_persistent_loop_only_where_it_won_clearly():
    grid = _measured_grid()
    assert len(grid) == 16
    picked = {key for key in grid if _C.persistent_auto(key[1], key[0], 2)}
    for N, H in picked:
        fwd, both = grid[N, H]
        assert fwd < 0.9 and both < 0.9, (N, H, fwd, both)  # a clear win, both ways
    # and every measured shape where it won by at least 2x both ways is taken
    assert {key for key, (fwd, both) in grid.items() if fwd < 0.5 and both < 0.5} <= picked


@pytest.mark.parametrize("H, N", [(256, 1), (1024, 4), (256, 16), (17, 3), (1, 1)])
def test_auto_rule_holds_for_smaller_shapes_and_only_half_precision(H, N):
    assert _C.persistent_auto(H, N, 2)
    for h, n in [(1, 1), (H, 1), (1, N), ((H + 1) // 2, (N + 1) // 2)]:
        assert _C.persistent_auto(h, n, 2), (h, n)  # fewer units or rows never flip the choice
    for elem in (4, 8):  # float32 and float64 were not measured at small batches
        assert not _C.persistent_auto(H, N, elem)


@pytest.mark.parametrize("H, N", [(1025, 1), (512, 16), (257, 16), (256, 17), (0, 1), (1, 0),
                                  (4096, 4)])
def test_auto_rule_leaves_other_shapes_to_the_general_loop(H, N):
    assert not _C.persistent_auto(H, N, 2)


# ---- the rows of each step (persistent::forward_rows, backward_rows) ------------------------
def _packed(lengths):
    """batch_sizes and offsets of sequences of these lengths, longest first (PackedSequence)."""
    sizes = [sum(1 for L in lengths if L > t) for t in range(max(lengths))]
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    return sizes, offsets


LENGTHS = [[5, 3, 3, 1], [4, 4, 4], [1], [6, 2], [3, 3, 2, 2, 1]]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_forward_rows_chain_each_sequence_in_its_order(lengths, reverse):
    """Row n of step s reads the output of sequence n's step before it in the layer's direction,
    or h0 exactly where that step is the sequence's first."""
    sizes, offsets = _packed(lengths)
    T = len(sizes)
    for s in range(T):
        bs, row, bs_src, row_src = _C.persistent_rows(sizes, len(lengths), reverse, False, False, s)
        t = T - 1 - s if reverse else s
        assert (bs, row) == (sizes[t], offsets[t])
        for n in range(bs):
            if n < bs_src:
                before = t + 1 if reverse else t - 1
                assert row_src + n == offsets[before] + n, (s, n)
            else:
                assert t == (lengths[n] - 1 if reverse else 0), (s, n)  # its first step


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_backward_rows_chain_each_sequence_against_its_order(lengths, reverse):
    """Backward step s (of T + 1) gives row n the dh of the step processed before it, sequence
    n's next step in the layer's direction; a row without one starts from grad_h_n, which is only
    right at its last step; a row whose chain ends here has reached its first step (grad_h0)."""
    sizes, offsets = _packed(lengths)
    T = len(sizes)
    for s in range(T + 1):
        bs, row, bs_prev, row_prev, rows_all = _C.persistent_rows(sizes, len(lengths), reverse,
                                                                  True, False, s)
        t = (s if reverse else T - 1 - s) if s < T else None
        assert (bs, row) == ((sizes[t], offsets[t]) if t is not None else (0, 0))
        assert rows_all == max(bs, bs_prev)
        t_prev = (s - 1 if reverse else T - s) if s > 0 else None
        for n in range(rows_all):
            if n < bs_prev:
                assert row_prev + n == offsets[t_prev] + n
                if n < bs:  # t is sequence n's step before t_prev in the layer's direction
                    assert t == (t_prev + 1 if reverse else t_prev - 1), (s, n)
                else:  # the chain ends: t_prev was sequence n's first step
                    assert t_prev == (lengths[n] - 1 if reverse else 0), (s, n)
            else:  # starts here from grad_h_n: its last step in the layer's direction
                assert t == (0 if reverse else lengths[n] - 1), (s, n)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_padded_rows_need_no_tables(backward, reverse):
    """The padded form (no step tables) gives the same rows as the tables of N rows a step."""
    sizes = [3] * 5
    for s in range(5 + backward):
        assert (_C.persistent_rows(sizes, 3, reverse, backward, True, s)
                == _C.persistent_rows(sizes, 3, reverse, backward, False, s))


def test_rows_refuse_a_step_past_the_end():
    with pytest.raises(ValueError, match=r"expected 0 <= s < 4, got 4"):
        _C.persistent_rows([2, 2, 1, 1], 2, False, False, False, 4)
    with pytest.raises(ValueError, match=r"expected 0 <= s <= 4, got 5"):
        _C.persistent_rows([2, 2, 1, 1], 2, False, True, False, 5)

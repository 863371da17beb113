"""The tensor-core product of the persistent loops' mma variant (csrc/common/mma_tile.h), checked on
every machine through rnnkit._C: the fragment maps of mma.sync.m16n8k16 (float16 and bfloat16,
kind "half") and m16n8k8 (float32 as TF32, kind "tf32"), the shared-memory layout,
the tile plan, and the block product run by the kernels' own offsets, task split and partial sums
with an emulated mma (csrc/common/mma_emulate.h). The kernels themselves run in
tests/library/test_persistent_cuda.py where a GPU is present.

What must hold: the maps are PTX's tables, element by element, and cover each tile once; the
product equals X Wt^T at awkward sizes (padding of k and of the columns, rows that are not a whole
tile, one warp or many, splits of the k steps); every fragment load of a warp hits 32 different
shared-memory banks; the plan stays within the shared memory and refuses what cannot fit."""

from __future__ import annotations

import pytest
import torch

import rnnkit._library  # noqa: F401  (loads rnnkit._C)
from rnnkit import _C

H200_SMEM = 232448  # 227 KiB per block (opt-in)
WARPS = 8  # persistent kernels: 256 threads
KINDS = ["half", "tf32"]
K_STEP = {"half": 16, "tf32": 8}  # k of one instruction
BYTES = {"half": 2, "tf32": 4}  # of one staged value


# ---- the fragment maps, against PTX ISA's "Matrix Fragments for mma.m16n8k16" (16-bit types) ----
def ptx_a(lane, i):
    """A (16 x 16): element a_i of a lane, i = 0..7, as the PTX table gives it."""
    group, tid = lane >> 2, lane % 4
    row = group if i in (0, 1, 4, 5) else group + 8
    col = tid * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def ptx_b(lane, i):
    """B (16 x 8): element b_i, i = 0..3, as (row k, column n)."""
    group, tid = lane >> 2, lane % 4
    return tid * 2 + (i & 1) + (8 if i >= 2 else 0), group


def ptx_c(lane, i):
    """C and D (16 x 8 float): element c_i, i = 0..3."""
    group, tid = lane >> 2, lane % 4
    return group + (8 if i >= 2 else 0), tid * 2 + (i & 1)


def ptx_a_tf32(lane, i):
    """A (16 x 8) of mma.m16n8k8 with .tf32: element a_i, i = 0..3."""
    group, tid = lane >> 2, lane % 4
    return group + (8 if i in (1, 3) else 0), tid + (4 if i >= 2 else 0)


def ptx_b_tf32(lane, i):
    """B (8 x 8) with .tf32: element b_i, i = 0..1, as (row k, column n)."""
    group, tid = lane >> 2, lane % 4
    return tid + (4 if i == 1 else 0), group


@pytest.mark.parametrize("lane", range(32))
def test_tf32_fragment_maps_are_ptx_tables(lane):
    for r in range(4):
        assert _C.mma_coord("a", lane, r, "tf32") == ptx_a_tf32(lane, r)
    for r in range(2):
        assert _C.mma_coord("b", lane, r, "tf32") == ptx_b_tf32(lane, r)
    for i in range(4):
        assert _C.mma_coord("c", lane, i, "tf32") == ptx_c(lane, i)


@pytest.mark.parametrize("lane", range(32))
def test_fragment_maps_are_ptx_tables(lane):
    for r in range(4):  # register r of A holds a_{2r} and a_{2r+1}, along a row
        row, col = _C.mma_coord("a", lane, r)
        assert (row, col) == ptx_a(lane, 2 * r)
        assert (row, col + 1) == ptx_a(lane, 2 * r + 1)
    for r in range(2):  # register r of B holds b_{2r} and b_{2r+1}, down a column
        row, col = _C.mma_coord("b", lane, r)
        assert (row, col) == ptx_b(lane, 2 * r)
        assert (row + 1, col) == ptx_b(lane, 2 * r + 1)
    for i in range(4):
        assert _C.mma_coord("c", lane, i) == ptx_c(lane, i)


@pytest.mark.parametrize("kind, operand, regs, pair, shape", [
    ("half", "a", 4, (0, 1), (16, 16)), ("half", "b", 2, (1, 0), (16, 8)),
    ("half", "c", 4, None, (16, 8)),
    ("tf32", "a", 4, None, (16, 8)), ("tf32", "b", 2, None, (8, 8)),
    ("tf32", "c", 4, None, (16, 8))])
def test_fragment_maps_cover_each_tile_once(kind, operand, regs, pair, shape):
    seen = []
    for lane in range(32):
        for r in range(regs):
            row, col = _C.mma_coord(operand, lane, r, kind)
            seen.append((row, col))
            if pair is not None:
                seen.append((row + pair[0], col + pair[1]))
    assert sorted(seen) == [(m, n) for m in range(shape[0]) for n in range(shape[1])]


@pytest.mark.parametrize("args", [("d", 0, 0), ("a", 32, 0), ("a", 0, 4), ("b", 0, 2),
                                  ("c", -1, 0)])
def test_fragment_map_refuses_what_is_not_there(args):
    with pytest.raises(ValueError, match="expected operand a, b or c, lane 0-31"):
        _C.mma_coord(*args)
    with pytest.raises(ValueError, match="expected kind half or tf32, got 'fp8'"):
        _C.mma_coord("a", 0, 0, "fp8")


# ---- the plan ----------------------------------------------------------------------------------
def tile_plan(H, N, gates, units, backward, warps=WARPS, smem=H200_SMEM, kind="half"):
    return _C.mma_tile_plan(H, N, gates, units, backward, warps, smem, kind)


PLANS = [(H, N, gates, units, backward)
         for H in (1, 17, 256, 768, 1024, 2048)
         for N in (1, 5, 16, 33, 64, 128)
         for gates in (1, 3, 4)
         for units in (1, 3, 6, 8)
         for backward in (False, True)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("H, N, gates, units, backward", PLANS)
def test_plan_layout_and_memory(H, N, gates, units, backward, kind):
    p = tile_plan(H, N, gates, units, backward, kind=kind)
    assert p["kind"] == kind
    length = gates * H if backward else H
    cols = units if backward else units * gates
    step, size = K_STEP[kind], BYTES[kind]
    ld = -(-length // step) * step + 16 // size  # a whole step, then 16 bytes
    weights = -(-(-(-cols // 8) * 8) * ld * size // 16) * 16
    if not p["fits"]:
        # refused only when the weights, one tile of 16 staged rows and their sums do not fit
        assert weights + 16 * (ld * size + p["splits"] * p["cols_padded"] * 4) + 16 > H200_SMEM, p
        return
    assert (p["cols"], p["len"], p["ld"]) == (cols, length, ld)
    assert p["cols_padded"] % 8 == 0 and cols <= p["cols_padded"] < cols + 8
    assert p["ld"] * size % 16 == 0  # staged rows stay whole 16-byte pieces
    assert p["chunk"] % 16 == 0 and 16 <= p["chunk"] <= -(-N // 16) * 16
    n_tiles, k_steps = p["cols_padded"] // 8, -(-length // step)
    assert 1 <= p["splits"] <= k_steps
    assert p["splits"] == 1 or p["splits"] * n_tiles <= WARPS  # one tile of rows keeps warps busy
    assert p["stage_offset"] >= p["cols_padded"] * ld * size and p["stage_offset"] % 16 == 0
    assert p["partial_offset"] >= p["stage_offset"] + p["chunk"] * ld * size
    assert p["partial_offset"] % 16 == 0
    assert p["smem_bytes"] == p["partial_offset"] + p["splits"] * p["chunk"] * p["cols_padded"] * 4
    assert p["smem_bytes"] <= H200_SMEM


def test_plan_refuses_what_cannot_fit():
    # LSTM backward at H = 4096: one unit's W_hh column is 16384 values, 8 padded rows of them
    p = tile_plan(4096, 16, 4, 1, True)
    assert not p["fits"] and p["reason"] == "W_hh slice does not fit in shared memory"
    p = tile_plan(256, 16, 4, 2, False, smem=8 * 264 * 2 + 1000)
    assert not p["fits"] and p["reason"] == "no room left to stage a tile of rows"
    for bad in [(0, 1, 4, 1, False), (8, 0, 4, 1, False), (8, 1, 0, 1, False),
                (8, 1, 4, 0, False)]:
        assert tile_plan(*bad)["reason"] == "empty shape"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("H", [16, 17, 256, 768, 1000])
def test_fragment_loads_hit_32_banks(H, kind):
    """A warp's load of register r of A (rows of X) or B (rows of Wt) reads 32 words in 32
    different banks: the row padding puts consecutive rows 4 banks apart."""
    ld = tile_plan(H, 16, 4, 2, False, kind=kind)["ld"]
    per_word = 4 // BYTES[kind]  # values in a 4-byte bank word
    for operand, regs in (("a", 4), ("b", 2)):
        for r in range(regs):
            banks = set()
            for lane in range(32):
                row, col = _C.mma_coord(operand, lane, r, kind)
                m, k = (row, col) if operand == "a" else (col, row)  # B: Wt's row n, value k
                banks.add((m * ld + k) // per_word % 32)
            assert len(banks) == 32, (operand, r, ld)


# ---- the block product, through the kernels' own offsets and split ----------------------------
def block_product(H, N, gates, units, backward, rows, warps=WARPS, seed=0, kind="half"):
    """(ours, want) for one chunk of min(rows, chunk) rows."""
    p = tile_plan(H, N, gates, units, backward, warps, kind=kind)
    rows = min(rows, p["chunk"])
    g = torch.Generator().manual_seed(seed)
    # values that 16 bits hold exactly, as the kernels read them; the sums are float
    x = torch.randn(rows, p["len"], generator=g).to(torch.bfloat16).float()
    wt = torch.randn(p["cols"], p["len"], generator=g).to(torch.bfloat16).float()
    plan, s = _C.mma_block_product(H, N, gates, units, backward, warps, H200_SMEM, rows,
                                   x.numpy().tobytes(), wt.numpy().tobytes(), kind)
    assert plan == p
    ours = torch.frombuffer(bytearray(s), dtype=torch.float32).view(rows, p["cols"])
    return ours, x.double() @ wt.double().t()


@pytest.mark.parametrize("H, N, gates, units, backward, rows", [
    (768, 16, 4, 6, False, 16),   # issue 17's case: forward, 3 column tiles, 2 splits
    (768, 16, 4, 6, True, 16),    # its backward: one column tile, 8 splits of 192 k steps
    (17, 5, 3, 3, False, 5),      # k padded from 17 to 32, 9 of 16 columns, 5 of 16 rows
    (17, 5, 3, 3, True, 5),
    (1, 1, 1, 1, False, 1),       # one value
    (129, 33, 4, 2, False, 33),   # 3 tiles of rows, the last with one row
    (256, 64, 4, 2, True, 64),
    (40, 100, 1, 5, False, 37),   # fewer rows than the chunk
])
@pytest.mark.parametrize("warps", [1, 3, WARPS])
@pytest.mark.parametrize("kind", KINDS)
def test_block_product_equals_the_matrix_product(H, N, gates, units, backward, rows, warps, kind):
    if not tile_plan(H, N, gates, units, backward, warps, kind=kind)["fits"]:
        # float32 rows of issue 17's backward (G = 3072) leave no room for 16 staged rows
        assert (kind, H, backward) == ("tf32", 768, True)
        return
    ours, want = block_product(H, N, gates, units, backward, rows, warps, seed=H + rows, kind=kind)
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=1e-4)


def test_block_product_refuses_bad_sizes():
    p = tile_plan(17, 5, 3, 3, False)
    x = torch.zeros(p["chunk"] + 1, p["len"]).numpy().tobytes()
    wt = torch.zeros(p["cols"], p["len"]).numpy().tobytes()
    with pytest.raises(ValueError, match=r"0 <= rows <= chunk \(16\)"):
        _C.mma_block_product(17, 5, 3, 3, False, WARPS, H200_SMEM, p["chunk"] + 1, x, wt)
    with pytest.raises(ValueError, match="x of 340 bytes"):
        _C.mma_block_product(17, 5, 3, 3, False, WARPS, H200_SMEM, 5, b"\0" * 8, wt)


# ---- a whole block: Wt gathered from W_hh, sums read back in the pointwise pass's order ---------
@pytest.mark.parametrize("H, N, gates, max_blocks, rows", [
    (768, 16, 4, 132, 16),  # issue 17's case: 6 units a block, the last block 6 too
    (17, 5, 3, 4, 5),       # 5 units a block, the last block 2
    (33, 3, 1, 132, 3),     # one unit a block
    (40, 20, 4, 3, 20),     # 14 units a block, 12 in the last; two tiles of rows
])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_block_sums_its_own_units(H, N, gates, max_blocks, rows, backward, kind):
    """Block b's sums, item by item (row, unit) and gate by gate, are the columns of the full
    product that belong to its units: forward h W_hhᵀ at W_hh's rows g H + j (gate g of unit j),
    backward d W_hh at column j."""
    g = torch.Generator().manual_seed(H * 7 + rows)
    G = gates * H
    w_hh = torch.randn(G, H, generator=g).to(torch.bfloat16).float()
    x = torch.randn(rows, G if backward else H, generator=g).to(torch.bfloat16).float()
    full = (x.double() @ w_hh.double()) if backward else (x.double() @ w_hh.double().t())
    partition = _C.persistent_plan(H, N, gates, 2, backward, max_blocks, H200_SMEM)
    units = partition["units"]
    plan = tile_plan(H, N, gates, units, backward, kind=kind)
    if not plan["fits"]:
        assert (kind, H, backward) == ("tf32", 768, True)  # as in the test above
        return
    rows = min(rows, plan["chunk"])
    x = x[:rows]
    full = full[:rows]
    for block in range(partition["blocks"]):
        j0, u = _C.persistent_units(H, units, block)
        s = _C.mma_block_sums(H, N, gates, max_blocks, block, backward, WARPS, H200_SMEM, rows,
                              x.numpy().tobytes(), w_hh.numpy().tobytes(), kind)
        ours = torch.frombuffer(bytearray(s), dtype=torch.float32).double()
        if backward:
            want = full[:, j0:j0 + u]  # [rows, u], items in (row, unit) order
        else:  # [rows, u, gates]: unit j0 + jl, gate k is column k H + j0 + jl
            want = torch.stack([full[:, k * H + j0:k * H + j0 + u] for k in range(gates)], dim=-1)
        torch.testing.assert_close(ours, want.reshape(-1), rtol=1e-5, atol=1e-4,
                                   msg=lambda m, b=block: f"block {b}: {m}")

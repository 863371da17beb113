"""The index helpers of csrc/common/index.h that the CUDA kernels use, checked on every machine
through rnnkit._C (they are the same inline functions the kernels compile)."""

import pytest

import rnnkit._library  # noqa: F401  (loads rnnkit._C)
from rnnkit import _C


@pytest.mark.parametrize("H", [1, 3, 17, 129, 512, 2**20 + 7])
def test_unit_of_is_row_major(H):
    for e in [0, 1, H - 1, H, H + 1, 5 * H + 2, 2**31 - 1, 2**31, 2**31 + 5, 2**40 + 123]:
        assert _C.unit_of(e, H) == divmod(e, H), (e, H)


def test_unit_of_rejects_bad_arguments():
    with pytest.raises(ValueError, match="H > 0"):
        _C.unit_of(3, 0)
    with pytest.raises(ValueError, match="e >= 0"):
        _C.unit_of(-1, 4)


@pytest.mark.parametrize(
    "count, threads, max_blocks, expected",
    [(0, 256, 65535, 1), (1, 256, 65535, 1), (256, 256, 65535, 1), (257, 256, 65535, 2),
     (64 * 512, 256, 65535, 128), (2**40, 256, 65535, 65535), (2**31 + 1, 256, 2**40, 2**23 + 1)],
)
def test_grid_blocks(count, threads, max_blocks, expected):
    assert _C.grid_blocks(count, threads, max_blocks) == expected


def test_grid_blocks_covers_every_element():
    """The blocks times the threads, looped over (grid stride), reach every element once."""
    for count in (1, 17, 255, 256, 257, 10**6):
        blocks = _C.grid_blocks(count, 256, 64)
        stride = blocks * 256
        seen = sum(len(range(start, count, stride)) for start in range(min(stride, count)))
        assert seen == count

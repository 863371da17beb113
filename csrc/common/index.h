// Index math of the pointwise passes, shared by both backends.
//
// A pointwise pass of one step covers a [rows, H] grid of (batch row n, hidden unit j) pairs.
// The CUDA kernels give each thread one flat element e of that grid (grid-stride loop, int64 so
// that rows * H may pass 2^31); unit_of turns e back into (n, j). The CPU build exposes these
// functions through rnnkit._C so that the tests check them on machines without a GPU.
#pragma once

#include <cstdint>

#include "math.h"  // RNNKIT_HD

namespace rnnkit {
namespace index {

struct Unit {
  int64_t n;  // batch row
  int64_t j;  // hidden unit
};

// The e-th pair of a row-major [rows, H] grid (H > 0).
RNNKIT_HD Unit unit_of(int64_t e, int64_t H) {
  const int64_t n = e / H;
  return {n, e - n * H};
}

// Blocks of `threads` threads for `count` elements, at most max_blocks (the kernels loop over
// the rest); at least 1, so a launch is always valid (callers skip count == 0 anyway).
inline int64_t grid_blocks(int64_t count, int64_t threads, int64_t max_blocks) {
  int64_t blocks = (count + threads - 1) / threads;
  if (blocks > max_blocks) blocks = max_blocks;
  return blocks < 1 ? 1 : blocks;
}

}  // namespace index
}  // namespace rnnkit

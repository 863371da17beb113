// Every cell rnnkit compiles, in one list: adding a cell to rnnkit is its description (a header
// in common/cells/) and one entry here. rnnkit.cpp defines the operators of every cell listed,
// and each backend's registration file registers its kernels for them.
#pragma once

#include <cstdint>
#include <string>

#include "cells/gru.h"
#include "cells/layernorm_gru.h"
#include "cells/layernorm_lstm.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "cells/testing_mgu.h"

namespace rnnkit {

template <typename... Cells>
struct CellList {
  // f.template operator()<Cell>() for every cell of the list, in order.
  template <typename F>
  static void for_each(F&& f) {
    (f.template operator()<Cells>(), ...);
  }
};

// Operators in torch.ops.rnnkit.
using Cells = CellList<cells::Lstm, cells::Gru, cells::Rnn, cells::LayerNormLstm,
                       cells::LayerNormGru>;
// TEST ONLY: operators in torch.ops.rnnkit_testing, which the tests use to check that a cell
// needs nothing but its description (tests/library/test_testing_cell.py). Not part of rnnkit's API.
using TestingCells = CellList<cells::TestingMgu>;

// The workspace width of the cell named `name` (of either list) for hidden size H, with or
// without a projection; -1 for an unknown name. rnnkit._C.workspace_width exposes it to the
// Python fake kernels, so that they and the kernels read one definition.
inline int64_t workspace_width(const std::string& name, int64_t H, bool proj) {
  int64_t width = -1;
  const auto look = [&]<typename Cell>() {
    if (name == Cell::kName) width = typename Cell::Layout{H, proj}.width();
  };
  Cells::for_each(look);
  TestingCells::for_each(look);
  return width;
}

}  // namespace rnnkit

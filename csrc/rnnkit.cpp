// The operators' definitions (TORCH_LIBRARY) and the Python module rnnkit._C.
//
// Every cell of common/registry.h gets its operators defined here, with the schemas of its
// family (common/operators.h); each backend registers its kernels for them in one file
// (cpu/register.cpp, cuda/register.cu). rnnkit/ops.py adds autograd and fake (meta)
// implementations in Python.
//
// Layer operators run one layer in one direction over a whole sequence. Their input is either
// padded, [T, N, I] with batch_sizes None, or packed, [P, I] with batch_sizes [T] (int64, the
// active batch of each step, non-increasing). `workspace` holds what backward needs, one row
// [W] per packed row (the cell's Layout, common/cells/). With train=False (inference) the LSTM
// and GRU layers keep no workspace: it comes back empty, [0], and backward through that call is
// an error.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/index.h"
#include "common/mma_emulate.h"
#include "common/mma_tile.h"
#include "common/operators.h"
#include "common/persistent.h"
#include "common/registry.h"

namespace rnnkit {
// Which matrix products the CPU kernels call; defined by the CPU backend (cpu/register.cpp).
const char* cpu_blas_path();
const char* cpu_bf16_path();
}  // namespace rnnkit

TORCH_LIBRARY(rnnkit, m) {
  rnnkit::Cells::for_each([&]<typename Cell>() { rnnkit::define_operators<Cell>(m); });
  // The LSTM layer's second-order recurrences (rnnkit/lstm_second_order.py; CPU kernels in
  // cpu/lstm_second_order.h, which states the equations). Not differentiable themselves.
  m.def("lstm_adjoint_steps(Tensor? src_h, Tensor? src_c, Tensor? src_a, Tensor? dh_last, "
        "Tensor? dc_last, Tensor steps, Tensor c_prev, Tensor tau, Tensor w_hh) -> (Tensor da, "
        "Tensor dh, Tensor dc)");
  m.def("lstm_tangent_steps(Tensor a_in, Tensor h0_dot, Tensor c0_dot, Tensor steps, "
        "Tensor c_prev, Tensor tau, Tensor w_hh) -> (Tensor a_dot, Tensor c_dot, Tensor h_dot)");
  m.def("lstm_second_order_sources(Tensor steps, Tensor c_prev, Tensor tau, Tensor a_dot, "
        "Tensor c_dot, Tensor c0_dot, Tensor dh, Tensor dc) -> (Tensor src_a, Tensor src_c)");
}

// TEST ONLY: cells that exist to test the cell machinery (common/registry.h); not rnnkit's API.
TORCH_LIBRARY(rnnkit_testing, m) {
  rnnkit::TestingCells::for_each([&]<typename Cell>() { rnnkit::define_operators<Cell>(m); });
  // One product of the CPU time loops' reduced-precision path (cpu/weights.h: WeightB), on the
  // path this process chose: c = a op(b) + beta c in float32, op(b) = b^T when trans_b; a in
  // bfloat16 or float32, b in bfloat16 or float16. pack: as for a weight used at every step.
  // repeats > 1 multiplies that many times with the one prepared weight (c = a op(b) + beta c
  // each time), which benchmarks/bench_bf16_products.py times.
  m.def("weight_product(Tensor a, Tensor b, bool trans_b, Tensor c, float beta, bool pack, "
        "int repeats=1) -> Tensor");
  // The split of a balanced parallel loop (cpu/balance.h: ThreadRates) over n items in multiples
  // of grain for `threads` threads, after len(cost) / threads simulated runs, in run r of which
  // thread t takes cost[r * threads + t] seconds per item: the bounds [0, b1, ..., n] of the
  // threads' shares.
  m.def("balanced_split(int n, int grain, int threads, float[] cost) -> int[]");
}

// ---- rnnkit._C: build facts for rnnkit.build_info() ------------------------------------------
#ifndef RNNKIT_TORCH_VERSION
#define RNNKIT_TORCH_VERSION "unknown"
#endif
#ifndef RNNKIT_CPU_CAPABILITY
#define RNNKIT_CPU_CAPABILITY "default"
#endif
#ifndef RNNKIT_CUDA_ARCHS
#define RNNKIT_CUDA_ARCHS ""
#endif
#ifndef RNNKIT_CXX_FLAGS
#define RNNKIT_CXX_FLAGS ""
#endif

// The index helpers of common/index.h, which the CUDA kernels use, exposed so that the tests
// check them on every machine (tests/test_index.py).
static PyObject* py_unit_of(PyObject*, PyObject* args) {
  long long e = 0, H = 0;
  if (!PyArg_ParseTuple(args, "LL", &e, &H)) return nullptr;
  if (H <= 0 || e < 0) {
    PyErr_Format(PyExc_ValueError, "unit_of: expected e >= 0 and H > 0, got e = %lld, H = %lld",
                 e, H);
    return nullptr;
  }
  const rnnkit::index::Unit u = rnnkit::index::unit_of(e, H);
  return Py_BuildValue("(LL)", static_cast<long long>(u.n), static_cast<long long>(u.j));
}

static PyObject* py_grid_blocks(PyObject*, PyObject* args) {
  long long count = 0, threads = 0, max_blocks = 0;
  if (!PyArg_ParseTuple(args, "LLL", &count, &threads, &max_blocks)) return nullptr;
  if (count < 0 || threads <= 0 || max_blocks <= 0) {
    PyErr_Format(PyExc_ValueError,
                 "grid_blocks: expected count >= 0, threads > 0, max_blocks > 0, got %lld, "
                 "%lld, %lld", count, threads, max_blocks);
    return nullptr;
  }
  return PyLong_FromLongLong(rnnkit::index::grid_blocks(count, threads, max_blocks));
}

// The plan of the persistent CUDA kernels (common/persistent.h), for tests/test_persistent_plan.py.
static PyObject* py_persistent_plan(PyObject*, PyObject* args) {
  long long H = 0, N = 0, gates = 0, elem_bytes = 0, max_blocks = 0, smem_limit = 0;
  int backward = 0;
  if (!PyArg_ParseTuple(args, "LLLLpLL", &H, &N, &gates, &elem_bytes, &backward, &max_blocks,
                        &smem_limit))
    return nullptr;
  const rnnkit::persistent::Plan p = rnnkit::persistent::make_plan(
      H, N, gates, elem_bytes, backward != 0, max_blocks, smem_limit);
  return Py_BuildValue("{s:O,s:s,s:L,s:L,s:L,s:L,s:L}", "fits", p.fits() ? Py_True : Py_False,
                       "reason", rnnkit::persistent::refusal_text(p.refusal), "blocks",
                       static_cast<long long>(p.blocks), "units", static_cast<long long>(p.units),
                       "chunk", static_cast<long long>(p.chunk), "weight_bytes",
                       static_cast<long long>(p.weight_bytes), "smem_bytes",
                       static_cast<long long>(p.smem_bytes));
}

static PyObject* py_persistent_units(PyObject*, PyObject* args) {
  long long H = 0, units = 0, block = 0;
  if (!PyArg_ParseTuple(args, "LLL", &H, &units, &block)) return nullptr;
  if (H <= 0 || units <= 0 || block < 0) {
    PyErr_Format(PyExc_ValueError,
                 "persistent_units: expected H > 0, units > 0, block >= 0, got %lld, %lld, %lld",
                 H, units, block);
    return nullptr;
  }
  rnnkit::persistent::Plan p;
  p.units = units;
  return Py_BuildValue("(LL)", static_cast<long long>(rnnkit::persistent::first_unit(p, block)),
                       static_cast<long long>(rnnkit::persistent::unit_count(p, H, block)));
}

// persistent_rows(batch_sizes, N, reverse, backward, padded, s) -> tuple: the rows of step s as
// the persistent kernels take them (persistent::forward_rows or backward_rows). batch_sizes: the
// active batch of each of the T steps (packed input; offsets are their running sum); padded: the
// kernels' form without tables (N rows every step, at row t * N), batch_sizes then [N] * T.
static PyObject* py_persistent_rows(PyObject*, PyObject* args) {
  PyObject* sizes = nullptr;
  long long N = 0, s = 0;
  int reverse = 0, backward = 0, padded = 0;
  if (!PyArg_ParseTuple(args, "OLpppL", &sizes, &N, &reverse, &backward, &padded, &s))
    return nullptr;
  PyObject* seq = PySequence_Fast(sizes, "persistent_rows: expected a list of batch sizes");
  if (seq == nullptr) return nullptr;
  const Py_ssize_t T = PySequence_Fast_GET_SIZE(seq);
  std::vector<int64_t> batch(static_cast<size_t>(T)), offsets(static_cast<size_t>(T));
  int64_t at = 0;
  for (Py_ssize_t t = 0; t < T; ++t) {
    batch[t] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, t));
    offsets[t] = at;
    at += batch[t];
  }
  Py_DECREF(seq);
  if (PyErr_Occurred()) return nullptr;
  if (s < 0 || s > T - (backward ? 0 : 1)) {
    PyErr_Format(PyExc_ValueError, "persistent_rows: expected 0 <= s %s %zd, got %lld",
                 backward ? "<=" : "<", T, s);
    return nullptr;
  }
  const rnnkit::persistent::Steps steps{padded ? nullptr : batch.data(),
                                        padded ? nullptr : offsets.data(), T, N, reverse != 0};
  if (backward) {
    const rnnkit::persistent::BackwardRows r = rnnkit::persistent::backward_rows(steps, s);
    return Py_BuildValue("(LLLLL)", (long long)r.bs, (long long)r.row, (long long)r.bs_prev,
                         (long long)r.row_prev, (long long)r.rows_all);
  }
  const rnnkit::persistent::ForwardRows r = rnnkit::persistent::forward_rows(steps, s);
  return Py_BuildValue("(LLLL)", (long long)r.bs, (long long)r.row, (long long)r.bs_src,
                       (long long)r.row_src);
}

// The choice RNNKIT_CUDA_PERSISTENT=auto makes (common/persistent.h), for the same tests.
static PyObject* py_persistent_auto(PyObject*, PyObject* args) {
  long long H = 0, N = 0, elem_bytes = 0;
  if (!PyArg_ParseTuple(args, "LLL", &H, &N, &elem_bytes)) return nullptr;
  return PyBool_FromLong(rnnkit::persistent::prefers_persistent(H, N, elem_bytes));
}

// The mma variant's tile plan, fragment maps and block product (common/mma_tile.h, run on the CPU
// by common/mma_emulate.h), for tests/library/test_persistent_mma.py. `kind`, the instruction:
// "half" (the default) or "tf32".
static bool parse_kind(const char* name, rnnkit::mma::Kind* kind) {
  const std::string k(name == nullptr ? "half" : name);
  if (k == "half" || k == "tf32") {
    *kind = k == "half" ? rnnkit::mma::Kind::Half : rnnkit::mma::Kind::Tf32;
    return true;
  }
  PyErr_Format(PyExc_ValueError, "mma: expected kind half or tf32, got '%s'", name);
  return false;
}

static bool parse_tile_plan(PyObject* args, rnnkit::mma::TilePlan* t, long long* warps_out,
                            long long* rows, Py_buffer* x, Py_buffer* wt) {
  long long H = 0, N = 0, gates = 0, units = 0, warps = 0, smem_limit = 0;
  int backward = 0;
  const char* kind_name = nullptr;
  const bool product = x != nullptr;
  const int ok = product ? PyArg_ParseTuple(args, "LLLLpLLLy*y*|s", &H, &N, &gates, &units,
                                            &backward, &warps, &smem_limit, rows, x, wt,
                                            &kind_name)
                         : PyArg_ParseTuple(args, "LLLLpLL|s", &H, &N, &gates, &units, &backward,
                                            &warps, &smem_limit, &kind_name);
  if (!ok) return false;
  rnnkit::mma::Kind kind;
  if (!parse_kind(kind_name, &kind)) {
    if (product) {
      PyBuffer_Release(x);
      PyBuffer_Release(wt);
    }
    return false;
  }
  *t = rnnkit::mma::make_tile_plan(H, N, gates, units, backward != 0, warps, smem_limit, kind);
  *warps_out = warps;
  return true;
}

static PyObject* tile_plan_dict(const rnnkit::mma::TilePlan& t) {
  return Py_BuildValue("{s:O,s:s,s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "fits",
                       t.fits() ? Py_True : Py_False, "kind",
                       t.kind == rnnkit::mma::Kind::Half ? "half" : "tf32", "reason",
                       rnnkit::persistent::refusal_text(t.refusal), "cols", (long long)t.cols,
                       "cols_padded", (long long)t.cols_padded, "len", (long long)t.len, "ld",
                       (long long)t.ld, "chunk", (long long)t.chunk, "splits", (long long)t.splits,
                       "stage_offset", (long long)t.stage_offset, "partial_offset",
                       (long long)t.partial_offset, "smem_bytes", (long long)t.smem_bytes);
}

static PyObject* py_mma_tile_plan(PyObject*, PyObject* args) {
  rnnkit::mma::TilePlan t;
  long long warps = 0;
  if (!parse_tile_plan(args, &t, &warps, nullptr, nullptr, nullptr)) return nullptr;
  return tile_plan_dict(t);
}

static PyObject* py_mma_coord(PyObject*, PyObject* args) {
  const char* operand = nullptr;
  const char* kind_name = nullptr;
  int lane = 0, r = 0;
  rnnkit::mma::Kind kind;
  if (!PyArg_ParseTuple(args, "sii|s", &operand, &lane, &r, &kind_name)) return nullptr;
  if (!parse_kind(kind_name, &kind)) return nullptr;
  const std::string op(operand);
  const int regs = op == "a" || op == "c" ? 4 : op == "b" ? 2 : 0;
  if (regs == 0 || lane < 0 || lane >= rnnkit::mma::kLanes || r < 0 || r >= regs) {
    PyErr_Format(PyExc_ValueError,
                 "mma_coord: expected operand a, b or c, lane 0-31 and a register or value "
                 "index 0-3 (b: 0-1), got '%s', %d, %d", operand, lane, r);
    return nullptr;
  }
  const rnnkit::mma::Coord c = op == "a"   ? rnnkit::mma::a_coord(kind, lane, r)
                               : op == "b" ? rnnkit::mma::b_coord(kind, lane, r)
                                           : rnnkit::mma::c_coord(lane, r);
  return Py_BuildValue("(ii)", c.row, c.col);
}

// mma_block_product(H, N, gates, units, backward, warps, smem_limit, rows, x, wt) -> (plan, s):
// x [rows, len] and wt [cols, len] as float32 bytes; s [rows, cols] as float32 bytes.
static PyObject* py_mma_block_product(PyObject*, PyObject* args) {
  rnnkit::mma::TilePlan t;
  long long rows = 0, warps = 0;
  Py_buffer x{}, wt{};
  if (!parse_tile_plan(args, &t, &warps, &rows, &x, &wt)) return nullptr;
  const auto release = [&] {
    PyBuffer_Release(&x);
    PyBuffer_Release(&wt);
  };
  const Py_ssize_t want_x = Py_ssize_t(rows * t.len * 4), want_wt = Py_ssize_t(t.cols * t.len * 4);
  if (!t.fits() || rows < 0 || rows > t.chunk || x.len != want_x || wt.len != want_wt) {
    PyErr_Format(PyExc_ValueError,
                 "mma_block_product: expected a plan that fits (%s), 0 <= rows <= chunk (%lld), "
                 "x of %zd bytes and wt of %zd bytes; got rows %lld, %zd and %zd bytes",
                 rnnkit::persistent::refusal_text(t.refusal), (long long)t.chunk, want_x,
                 want_wt, rows, x.len, wt.len);
    release();
    return nullptr;
  }
  const std::vector<float> s = rnnkit::mma::block_product(
      t, static_cast<const float*>(x.buf), static_cast<const float*>(wt.buf), rows, warps);
  release();
  PyObject* bytes = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(s.data()),
                                              Py_ssize_t(s.size() * sizeof(float)));
  if (bytes == nullptr) return nullptr;
  return Py_BuildValue("(NN)", tile_plan_dict(t), bytes);
}

// mma_block_sums(H, N, gates, max_blocks, block, backward, warps, smem_limit, rows, x, w_hh)
// -> bytes: block `block`'s sums for rows [0, rows) of one chunk, in the order of the kernels'
// pointwise pass (mma::block_sums), float32; x [rows, H or G] and w_hh [G, H] as float32 bytes.
static PyObject* py_mma_block_sums(PyObject*, PyObject* args) {
  long long H = 0, N = 0, gates = 0, max_blocks = 0, block = 0, warps = 0, smem_limit = 0;
  long long rows = 0;
  int backward = 0;
  const char* kind_name = nullptr;
  Py_buffer x{}, w{};
  if (!PyArg_ParseTuple(args, "LLLLLpLLLy*y*|s", &H, &N, &gates, &max_blocks, &block, &backward,
                        &warps, &smem_limit, &rows, &x, &w, &kind_name))
    return nullptr;
  rnnkit::mma::Kind kind;
  if (!parse_kind(kind_name, &kind)) {
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    return nullptr;
  }
  const rnnkit::persistent::Plan plan = rnnkit::persistent::make_plan(
      H, N, gates, rnnkit::mma::value_bytes(kind), backward != 0, max_blocks, smem_limit);
  const rnnkit::mma::TilePlan t = rnnkit::mma::make_tile_plan(
      H, N, gates, plan.units, backward != 0, warps, smem_limit, kind);
  const long long u = plan.fits() ? rnnkit::persistent::unit_count(plan, H, block) : 0;
  const Py_ssize_t want_x = Py_ssize_t(rows * t.len * 4), want_w = Py_ssize_t(gates * H * H * 4);
  if (!plan.fits() || !t.fits() || u <= 0 || rows < 0 || rows > t.chunk || x.len != want_x ||
      w.len != want_w) {
    PyErr_Format(PyExc_ValueError,
                 "mma_block_sums: expected plans that fit (%s, %s), a block that owns units "
                 "(block %lld owns %lld), 0 <= rows <= chunk (%lld), x of %zd bytes and w_hh of "
                 "%zd bytes; got rows %lld, %zd and %zd bytes",
                 rnnkit::persistent::refusal_text(plan.refusal),
                 rnnkit::persistent::refusal_text(t.refusal), block, u, (long long)t.chunk,
                 want_x, want_w, rows, x.len, w.len);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    return nullptr;
  }
  const std::vector<float> s = rnnkit::mma::block_sums(
      t, backward != 0, static_cast<const float*>(w.buf), H, gates,
      rnnkit::persistent::first_unit(plan, block), u, static_cast<const float*>(x.buf), rows,
      warps);
  PyBuffer_Release(&x);
  PyBuffer_Release(&w);
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(s.data()),
                                   Py_ssize_t(s.size() * sizeof(float)));
}

#ifdef RNNKIT_WITH_CUDA
static PyObject* py_persistent_last(PyObject*, PyObject*) {
  return Py_BuildValue("(ss)", rnnkit::persistent::last_forward().c_str(),
                       rnnkit::persistent::last_backward().c_str());
}
#endif

// The workspace width of a cell's layer operator (common/cells/: Layout::width), which the fake
// kernels of rnnkit/ops.py read so that they and the kernels share one definition.
static PyObject* py_workspace_width(PyObject*, PyObject* args) {
  const char* cell = nullptr;
  long long H = 0;
  int proj = 0;
  if (!PyArg_ParseTuple(args, "sLp", &cell, &H, &proj)) return nullptr;
  const int64_t width = rnnkit::workspace_width(cell, H, proj != 0);
  if (width < 0 || H < 0) {
    PyErr_Format(PyExc_ValueError,
                 "workspace_width: expected a cell of rnnkit (lstm, gru, rnn, layernorm_lstm, layernorm_gru) and H >= 0, got "
                 "'%s' and H = %lld", cell, H);
    return nullptr;
  }
  return PyLong_FromLongLong(width);
}

static PyMethodDef kMethods[] = {
    {"workspace_width", py_workspace_width, METH_VARARGS,
     "workspace_width(cell, H, proj) -> W: values per packed row a layer saves for backward"},
    {"persistent_plan", py_persistent_plan, METH_VARARGS,
     "persistent_plan(H, N, gates, elem_bytes, backward, max_blocks, smem_limit) -> dict: "
     "persistent::make_plan"},
    {"persistent_units", py_persistent_units, METH_VARARGS,
     "persistent_units(H, units, block) -> (first unit, count): the units block owns"},
    {"persistent_rows", py_persistent_rows, METH_VARARGS,
     "persistent_rows(batch_sizes, N, reverse, backward, padded, s) -> tuple: the rows of step "
     "s (persistent::forward_rows or backward_rows)"},
    {"persistent_auto", py_persistent_auto, METH_VARARGS,
     "persistent_auto(H, N, elem_bytes) -> bool: whether RNNKIT_CUDA_PERSISTENT=auto picks the "
     "persistent loop (persistent::prefers_persistent)"},
    {"mma_tile_plan", py_mma_tile_plan, METH_VARARGS,
     "mma_tile_plan(H, N, gates, units, backward, warps, smem_limit, kind='half') -> dict: "
     "mma::make_tile_plan"},
    {"mma_coord", py_mma_coord, METH_VARARGS,
     "mma_coord(operand, lane, r, kind='half') -> (row, col): mma::a_coord, b_coord or c_coord"},
    {"mma_block_sums", py_mma_block_sums, METH_VARARGS,
     "mma_block_sums(H, N, gates, max_blocks, block, backward, warps, smem_limit, rows, x, "
     "w_hh, kind='half') -> bytes: one block's sums as the mma kernels' pointwise pass reads "
     "them"},
    {"mma_block_product", py_mma_block_product, METH_VARARGS,
     "mma_block_product(H, N, gates, units, backward, warps, smem_limit, rows, x, wt, "
     "kind='half') -> (plan, s): the mma variant's block product on the CPU "
     "(mma::block_product)"},
#ifdef RNNKIT_WITH_CUDA
    {"persistent_last", py_persistent_last, METH_NOARGS,
     "persistent_last() -> (forward, backward): which loop the last CUDA layer call ran"},
#endif
    {"unit_of", py_unit_of, METH_VARARGS, "unit_of(e, H) -> (n, j): index::unit_of"},
    {"grid_blocks", py_grid_blocks, METH_VARARGS,
     "grid_blocks(count, threads, max_blocks) -> blocks: index::grid_blocks"},
    {nullptr, nullptr, 0, nullptr}};

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                                      "rnnkit's compiled kernels (operators in torch.ops.rnnkit)",
                                      -1, kMethods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "torch_version", RNNKIT_TORCH_VERSION);
  PyModule_AddStringConstant(m, "cxx_flags", RNNKIT_CXX_FLAGS);
  PyModule_AddStringConstant(m, "cuda_archs", RNNKIT_CUDA_ARCHS);
  PyModule_AddStringConstant(m, "cpu_capability", RNNKIT_CPU_CAPABILITY);
  PyModule_AddStringConstant(m, "cpu_blas", rnnkit::cpu_blas_path());
  PyModule_AddStringConstant(m, "cpu_bf16_path", rnnkit::cpu_bf16_path());
#ifdef RNNKIT_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
#ifdef _OPENMP
  PyModule_AddIntConstant(m, "openmp", 1);
#else
  PyModule_AddIntConstant(m, "openmp", 0);
#endif
#ifdef NDEBUG
  PyModule_AddIntConstant(m, "debug", 0);
#else
  PyModule_AddIntConstant(m, "debug", 1);
#endif
  return m;
}

// The one place where rnnkit's operator schemas are declared, and the Python module rnnkit._C.
//
// Each backend registers its kernels for these schemas in its own files (cpu/*.cpp with
// TORCH_LIBRARY_IMPL(rnnkit, CPU, m), cuda/*.cu with TORCH_LIBRARY_IMPL(rnnkit, CUDA, m)).
// rnnkit/ops.py adds autograd and fake (meta) implementations in Python.
//
// Layer operators run one layer in one direction over a whole sequence. Their input is either
// padded, [T, N, I] with batch_sizes None, or packed, [P, I] with batch_sizes [T] (int64, the
// active batch of each step, non-increasing). `workspace` holds what backward needs; its layout
// is private to the backend that made it. With train=False (inference) the LSTM and GRU layers
// keep no workspace: it comes back empty, [0], and backward through that call is an error.
#include <Python.h>
#include <torch/library.h>

#include "common/index.h"
#include "common/persistent.h"
#include "cpu/blas.h"

TORCH_LIBRARY(rnnkit, m) {
  // ---- LSTM ------------------------------------------------------------------------------
  m.def(
      "lstm(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool train=True) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor output, Tensor workspace, bool reverse) -> (Tensor grad_input, Tensor grad_h0, "
      "Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)");
  m.def(
      "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor hy, Tensor cy, Tensor workspace)");
  m.def(
      "lstm_cell_backward(Tensor? grad_hy, Tensor? grad_cy, Tensor input, Tensor hx, Tensor cx, "
      "Tensor w_ih, Tensor w_hh, Tensor hy, Tensor workspace) -> (Tensor grad_input, "
      "Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  // ---- GRU -------------------------------------------------------------------------------
  m.def(
      "gru(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool reverse, bool train=True) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
  m.def(
      "gru_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> (Tensor hy, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor hy, Tensor workspace) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // ---- Elman RNN (nonlinearity: "tanh" or "relu") -----------------------------------------
  m.def(
      "rnn(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, str nonlinearity, bool reverse) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, str nonlinearity, bool reverse) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  m.def(
      "rnn_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "str nonlinearity) -> Tensor hy");
  m.def(
      "rnn_cell_backward(Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor hy, str nonlinearity) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias)");
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

// The choice RNNKIT_CUDA_PERSISTENT=auto makes (common/persistent.h), for the same tests.
static PyObject* py_persistent_auto(PyObject*, PyObject* args) {
  long long H = 0, N = 0, elem_bytes = 0;
  if (!PyArg_ParseTuple(args, "LLL", &H, &N, &elem_bytes)) return nullptr;
  return PyBool_FromLong(rnnkit::persistent::prefers_persistent(H, N, elem_bytes));
}

#ifdef RNNKIT_WITH_CUDA
static PyObject* py_persistent_last(PyObject*, PyObject*) {
  return Py_BuildValue("(ss)", rnnkit::persistent::last_forward().c_str(),
                       rnnkit::persistent::last_backward().c_str());
}
#endif

static PyMethodDef kMethods[] = {
    {"persistent_plan", py_persistent_plan, METH_VARARGS,
     "persistent_plan(H, N, gates, elem_bytes, backward, max_blocks, smem_limit) -> dict: "
     "persistent::make_plan"},
    {"persistent_units", py_persistent_units, METH_VARARGS,
     "persistent_units(H, units, block) -> (first unit, count): the units block owns"},
    {"persistent_auto", py_persistent_auto, METH_VARARGS,
     "persistent_auto(H, N, elem_bytes) -> bool: whether RNNKIT_CUDA_PERSISTENT=auto picks the "
     "persistent loop (persistent::prefers_persistent)"},
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
  PyModule_AddStringConstant(m, "cpu_blas", rnnkit::cpu::blas_path());
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

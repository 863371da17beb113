// The host side of the persistent loops (cuda/persistent.cuh): the choice (RNNKIT_CUDA_PERSISTENT),
// the plan for the device at hand, the step tables of packed input, and the cooperative launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <string>
#include <type_traits>

#include "../common/persistent.h"
#include "persistent.cuh"
#include "persistent_kernels.cuh"
#include "persistent_mma.cuh"

namespace rnnkit {
namespace persistent {

namespace {
std::mutex last_mutex;
std::string last_fwd = "none yet", last_bwd = "none yet";
}  // namespace

std::string last_forward() {
  const std::lock_guard<std::mutex> lock(last_mutex);
  return last_fwd;
}
std::string last_backward() {
  const std::lock_guard<std::mutex> lock(last_mutex);
  return last_bwd;
}

}  // namespace persistent

namespace cuda {
namespace persistent {
namespace {

using at::Tensor;
namespace plan_ns = rnnkit::persistent;

void record(bool backward, const std::string& what) {
  const std::lock_guard<std::mutex> lock(plan_ns::last_mutex);
  (backward ? plan_ns::last_bwd : plan_ns::last_fwd) = what;
}

using plan_ns::Choice;

// RNNKIT_CUDA_PERSISTENT: "0" off; "1" on where the shape fits; "auto", unset or empty: the
// measured rule (plan_ns::prefers_persistent).
Choice requested() {
  const char* v = std::getenv("RNNKIT_CUDA_PERSISTENT");
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return Choice::Auto;
  if (std::strcmp(v, "0") == 0) return Choice::Off;
  TORCH_CHECK(std::strcmp(v, "1") == 0,
              "rnnkit: expected RNNKIT_CUDA_PERSISTENT to be 0, 1 or auto (or unset), got '", v,
              "'");
  return Choice::On;
}

// RNNKIT_CUDA_PERSISTENT_VARIANT: "wide" (also unset or empty), "basic" or "mma"
// (persistent_kernels.cuh, Variant). wide and basic give the same values, so the benchmark can
// time one against the other; mma (tensor cores) is not yet the default: it has not run on a GPU.
Variant variant() {
  const char* v = std::getenv("RNNKIT_CUDA_PERSISTENT_VARIANT");
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "wide") == 0) return Variant::Wide;
  if (std::strcmp(v, "mma") == 0) return Variant::Mma;
  TORCH_CHECK(std::strcmp(v, "basic") == 0,
              "rnnkit: expected RNNKIT_CUDA_PERSISTENT_VARIANT to be wide, basic or mma (or "
              "unset), got '", v, "'");
  return Variant::Basic;
}

// Whether rows of `len` values can be staged in 16-byte pieces from every one of `bases`: whole
// pieces a row, and every row start on a 16-byte boundary.
bool wide_rows(int64_t len, int64_t elem_bytes, std::initializer_list<const void*> bases) {
  if (len * elem_bytes % 16 != 0) return false;
  for (const void* b : bases)
    if (reinterpret_cast<std::uintptr_t>(b) % 16 != 0) return false;
  return true;
}

// The general loop runs instead; when the persistent loop was forced (1), say why.
bool decline(bool backward, Choice choice, const std::string& why) {
  record(backward, "general: " + why);
  if (choice == Choice::On) {
    TORCH_WARN_ONCE("rnnkit: RNNKIT_CUDA_PERSISTENT=1, but the ",
                    backward ? "backward" : "forward",
                    " of this layer runs the general loop: ", why);
  }
  return false;
}

struct Device {
  int sms = 0, smem_optin = 0, cooperative = 0, major = 0;
};

Device device_facts() {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  Device d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.cooperative, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
  return d;
}

// Whether every step has all N rows, at row t * N: the kernels then need no step tables.
bool padded(const SequencePlan& plan) {
  bool yes = true;
  for (int64_t t = 0; t < plan.T(); ++t)
    yes = yes && plan.batch_sizes[t] == plan.N && plan.offsets[t] == t * plan.N;
  return yes;
}

// Whether the current stream is being captured into a CUDA graph.
bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// The steps as the kernels read them; packed input gets its two tables on the device (kept alive
// in `tables` until the launch is queued; the allocator orders their reuse on the stream).
Steps device_steps(const SequencePlan& plan, Tensor* tables) {
  Steps s{nullptr, nullptr, plan.T(), plan.N, plan.reverse};
  if (padded(plan)) return s;
  Tensor host = at::empty({2, plan.T()}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::memcpy(h, plan.batch_sizes.data(), sizeof(int64_t) * plan.T());
  std::memcpy(h + plan.T(), plan.offsets.data(), sizeof(int64_t) * plan.T());
  *tables = host.to(at::Device(at::kCUDA, c10::cuda::current_device()), at::kLong,
                    /*non_blocking=*/true);
  s.batch_sizes = tables->data_ptr<int64_t>();
  s.offsets = s.batch_sizes + plan.T();
  return s;
}

// The mma variant's tile plan for this call, where it can run: compute capability 8.0 or later;
// float16 or bfloat16, or float32 where torch allows TF32 products
// (torch.backends.cuda.matmul.allow_tf32, as the general loop's cuBLAS products follow); a layout
// that fits. Otherwise why not, in *why, and the wide variant runs.
bool mma_tiles(const plan_ns::Plan& plan, int64_t H, int64_t N, int64_t K, int64_t elem_bytes,
               bool backward, const Device& dev, mma::TilePlan* tiles, std::string* why) {
  if (dev.major < 8) {
    *why = "the mma variant needs compute capability 8.0 or later";
    return false;
  }
  if (elem_bytes == 8 || (elem_bytes == 4 && !at::globalContext().allowTF32CuBLAS())) {
    *why = elem_bytes == 8 ? "the mma variant takes float16, bfloat16 or float32 (as TF32)"
                           : "float32 products stay full precision while "
                             "torch.backends.cuda.matmul.allow_tf32 is off";
    return false;
  }
  const mma::Kind kind = elem_bytes == 2 ? mma::Kind::Half : mma::Kind::Tf32;
  *tiles = mma::make_tile_plan(H, N, K, plan.units, backward, kPersistentThreads / kWarp,
                               dev.smem_optin, kind);
  if (!tiles->fits()) {
    *why = std::string("the mma variant's layout: ") + plan_ns::refusal_text(tiles->refusal);
    return false;
  }
  return true;
}

template <typename Params>
bool launch(void (*kernel)(Params), Params params, const Device& dev, bool backward,
            Choice choice, const std::string& ran_as = "persistent") {
  const plan_ns::Plan& plan = params.plan;
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(plan.smem_bytes)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kPersistentThreads, size_t(plan.smem_bytes)));
  if (int64_t(per_sm) * dev.sms < plan.blocks) {
    return decline(backward, choice, std::to_string(plan.blocks) + " blocks of " +
                                 std::to_string(plan.smem_bytes) +
                                 " bytes of shared memory cannot all be resident (" +
                                 std::to_string(per_sm) + " per SM, " +
                                 std::to_string(dev.sms) + " SMs)");
  }
  void* args[] = {&params};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                             dim3(unsigned(plan.blocks)),
                                             dim3(kPersistentThreads), args,
                                             size_t(plan.smem_bytes),
                                             at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  record(backward, ran_as);
  return true;
}

// The checks every call shares; fills *plan, *dev and *choice when the persistent loop may run.
bool prepare(Cell cell, const SequencePlan& sp, const Tensor& w_hh, const char* unsupported,
             bool backward, plan_ns::Plan* plan, Device* dev, Choice* choice) {
  *choice = requested();
  if (*choice == Choice::Off) {
    record(backward, "general: off (RNNKIT_CUDA_PERSISTENT=0)");
    return false;
  }
  const int64_t H = w_hh.size(1), K = gates_of(cell);
  if (*choice == Choice::Auto && !plan_ns::prefers_persistent(H, sp.N, w_hh.element_size())) {
    record(backward, "general: auto (H = " + std::to_string(H) + ", N = " +
                         std::to_string(sp.N) + ", " + std::to_string(w_hh.element_size()) +
                         "-byte values lie outside the measured rule)");
    return false;
  }
  if (unsupported != nullptr) return decline(backward, *choice, unsupported);
  if (sp.T() == 0) return decline(backward, *choice, "no time steps");
  if (!padded(sp) && capturing()) {
    // The step tables are copied from pinned host memory that a replay would read again after
    // the call has handed it back: the general loop captures packed input safely.
    return decline(backward, *choice, "packed input during CUDA graph capture");
  }
  *dev = device_facts();
  if (!dev->cooperative) {
    return decline(backward, *choice, "the device has no cooperative launch");
  }
  *plan = plan_ns::make_plan(H, sp.N, K, w_hh.element_size(), backward, dev->sms,
                             dev->smem_optin);
  if (!plan->fits()) {
    return decline(backward, *choice,
                   std::string(plan_ns::refusal_text(plan->refusal)) + " (H = " +
                       std::to_string(H) + ", N = " + std::to_string(sp.N) + ", " +
                       std::to_string(w_hh.element_size()) + "-byte values, " +
                       std::to_string(dev->smem_optin) + " bytes per block)");
  }
  return true;
}

// The mma kernels of a cell; float16, bfloat16 and float32 (float64 never reaches them:
// mma_tiles refuses it).
template <typename scalar_t>
constexpr bool has_mma = sizeof(scalar_t) == 2 || std::is_same_v<scalar_t, float>;

// What persistent_last() says when the mma variant ran.
constexpr const char* kRanMma = "persistent (mma)";

template <typename scalar_t>
bool launch_mma(const ForwardParams<scalar_t>& p, Cell cell, const Device& dev, Choice choice) {
  if constexpr (has_mma<scalar_t>) {
    switch (cell) {
      case Cell::Lstm:
        return launch(forward_mma_kernel<scalar_t, Cell::Lstm>, p, dev, false, choice, kRanMma);
      case Cell::Gru:
        return launch(forward_mma_kernel<scalar_t, Cell::Gru>, p, dev, false, choice, kRanMma);
      case Cell::Rnn:
        return launch(forward_mma_kernel<scalar_t, Cell::Rnn>, p, dev, false, choice, kRanMma);
    }
  }
  return false;
}
template <typename scalar_t>
bool launch_mma(const BackwardParams<scalar_t>& p, Cell cell, const Device& dev, Choice choice) {
  if constexpr (has_mma<scalar_t>) {
    switch (cell) {
      case Cell::Lstm:
        return launch(backward_mma_kernel<scalar_t, Cell::Lstm>, p, dev, true, choice, kRanMma);
      case Cell::Gru:
        return launch(backward_mma_kernel<scalar_t, Cell::Gru>, p, dev, true, choice, kRanMma);
      case Cell::Rnn:
        return launch(backward_mma_kernel<scalar_t, Cell::Rnn>, p, dev, true, choice, kRanMma);
    }
  }
  return false;
}

// RNNKIT_CUDA_PERSISTENT_VARIANT=mma: true when the mma variant took the call (*ran: whether it
// launched). Otherwise p turns to the wide variant and *ran_as says why, for persistent_last().
template <typename Params>
bool try_mma(Params& p, Cell cell, int64_t N, bool backward, const Device& dev, Choice choice,
             std::string* ran_as, bool* ran) {
  std::string why;
  if (mma_tiles(p.plan, p.H, N, gates_of(cell), sizeof(*p.w_hh), backward, dev, &p.tiles, &why)) {
    p.plan.smem_bytes = p.tiles.smem_bytes;
    *ran = launch_mma(p, cell, dev, choice);
    return true;
  }
  p.variant = Variant::Wide;
  *ran_as = "persistent (wide: " + why + ")";
  return false;
}

int64_t stage_offset(const plan_ns::Plan& plan) {
  return (plan.weight_bytes + plan_ns::kAlign - 1) / plan_ns::kAlign * plan_ns::kAlign;
}

template <typename scalar_t>
scalar_t* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

}  // namespace

bool forward(const ForwardArgs& a) {
  plan_ns::Plan plan;
  Device dev;
  Choice choice;
  if (!prepare(a.cell, *a.plan, a.w_hh, a.unsupported, false, &plan, &dev, &choice)) {
    return false;
  }
  Tensor tables;
  const Steps steps = device_steps(*a.plan, &tables);
  bool ran = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.out.scalar_type(),
                                  "rnnkit_persistent_forward", [&] {
    ForwardParams<scalar_t> p{steps, plan, a.w_hh.size(1), a.ws.defined() ? a.ws.size(1) : 0,
                              stage_offset(plan), a.act, variant(),
                              wide_rows(a.w_hh.size(1), sizeof(scalar_t),
                                        {a.out.data_ptr(), a.h0.data_ptr()}),
                              a.w_hh.data_ptr<scalar_t>(), a.h0.data_ptr<scalar_t>(),
                              a.out.data_ptr<scalar_t>(), a.h_n.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(a.c_n), ptr_or_null<scalar_t>(a.ws),
                              ptr_or_null<scalar_t>(a.b_hh)};
    std::string ran_as = "persistent";
    if (p.variant == Variant::Mma && try_mma(p, a.cell, a.plan->N, false, dev, choice, &ran_as, &ran))
      return;
    switch (a.cell) {
      case Cell::Lstm:
        ran = launch(forward_kernel<scalar_t, Cell::Lstm>, p, dev, false, choice, ran_as);
        break;
      case Cell::Gru:
        ran = launch(forward_kernel<scalar_t, Cell::Gru>, p, dev, false, choice, ran_as);
        break;
      case Cell::Rnn:
        ran = launch(forward_kernel<scalar_t, Cell::Rnn>, p, dev, false, choice, ran_as);
        break;
    }
  });
  return ran;
}

bool backward(const BackwardArgs& a) {
  plan_ns::Plan plan;
  Device dev;
  Choice choice;
  if (!prepare(a.cell, *a.plan, a.w_hh, a.unsupported, true, &plan, &dev, &choice)) {
    return false;
  }
  Tensor tables;
  const Steps steps = device_steps(*a.plan, &tables);
  bool ran = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dgates.scalar_type(),
                                  "rnnkit_persistent_backward", [&] {
    BackwardParams<scalar_t> p{steps, plan, a.w_hh.size(1), a.ws.defined() ? a.ws.size(1) : 0,
                               stage_offset(plan), a.act, variant(),
                               wide_rows(a.w_hh.size(0), sizeof(scalar_t), {a.dgates.data_ptr()}),
                               a.w_hh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(a.h_prev),
                               ptr_or_null<scalar_t>(a.c_prev), ptr_or_null<scalar_t>(a.out),
                               ptr_or_null<scalar_t>(a.ws), ptr_or_null<scalar_t>(a.gout),
                               a.dh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(a.dc),
                               a.dgates.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(a.dx)};
    std::string ran_as = "persistent";
    if (p.variant == Variant::Mma && try_mma(p, a.cell, a.plan->N, true, dev, choice, &ran_as, &ran))
      return;
    switch (a.cell) {
      case Cell::Lstm:
        ran = launch(backward_kernel<scalar_t, Cell::Lstm>, p, dev, true, choice, ran_as);
        break;
      case Cell::Gru:
        ran = launch(backward_kernel<scalar_t, Cell::Gru>, p, dev, true, choice, ran_as);
        break;
      case Cell::Rnn:
        ran = launch(backward_kernel<scalar_t, Cell::Rnn>, p, dev, true, choice, ran_as);
        break;
    }
  });
  return ran;
}

}  // namespace persistent
}  // namespace cuda
}  // namespace rnnkit

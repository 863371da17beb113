// Large buffers that a kernel fills right after allocating them (workspaces, outputs, gate
// gradients: tens of MB for a typical layer).
//
// A fresh buffer is untouched memory: the first write to each 4 KiB page faults into the
// kernel, and the C library returns blocks above 32 MiB to the system on every free, so a
// training loop would pay those faults again at every step (docs/kernels.md has the cost). Two
// remedies, both here:
//   - Buffers of 4 MiB and more come from a small cache of blocks freed by earlier calls, whose
//     pages are already mapped. A block is reused for a request of at least half its size; the
//     cache keeps at most RNNKIT_CPU_CACHE_MB megabytes (default 1024; 0 turns it off), and
//     frees the oldest blocks first when over.
//   - New blocks ask for transparent huge pages (2 MiB) before the first touch, so filling one
//     costs a few dozen faults instead of thousands. This is advice only: where the system
//     offers no huge pages, nothing changes.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace rnnkit {
namespace cpu {

class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t(4) << 20;  // smaller buffers: at::empty
  static constexpr size_t kAlign = size_t(2) << 20;     // huge-page aligned blocks

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: deleters may run at exit
    return *cache;
  }

  // A block of at least `bytes` (a multiple of kAlign); *size receives its real size.
  void* take(size_t bytes, size_t* size) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->second >= bytes && it->second / 2 <= bytes) {
          void* p = it->first;
          *size = it->second;
          cached_ -= it->second;
          blocks_.erase(it);
          return p;
        }
      }
    }
    *size = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, *size);
    TORCH_CHECK(p != nullptr, "rnnkit: out of memory allocating a ", *size >> 20,
                " MiB buffer on the CPU");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, *size, MADV_HUGEPAGE);
#endif
    return p;
  }

  // Gives a block back: kept for reuse while the cache has room, else freed.
  void give(void* p, size_t size) {
    std::deque<std::pair<void*, size_t>> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (size <= limit_) {
        blocks_.emplace_back(p, size);
        cached_ += size;
        p = nullptr;
      }
      while (cached_ > limit_) {
        evicted.push_back(blocks_.front());
        cached_ -= blocks_.front().second;
        blocks_.pop_front();
      }
    }
    if (p != nullptr) std::free(p);
    for (auto& block : evicted) std::free(block.first);
  }

  bool enabled() const { return limit_ > 0; }

 private:
  BlockCache() {
    const char* mb = std::getenv("RNNKIT_CPU_CACHE_MB");
    limit_ = (mb != nullptr ? std::strtoull(mb, nullptr, 10) : 1024) << 20;
  }

  std::mutex mutex_;
  std::deque<std::pair<void*, size_t>> blocks_;  // oldest first
  size_t cached_ = 0, limit_ = 0;
};

inline at::Tensor large_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * options.dtype().itemsize();
  BlockCache& cache = BlockCache::instance();
  if (bytes < BlockCache::kMinBytes || !cache.enabled()) return at::empty(sizes, options);
  size_t size = 0;
  void* p = cache.take(bytes, &size);
  return at::from_blob(
      p, sizes, [size](void* q) { BlockCache::instance().give(q, size); }, options);
}

// A scratch buffer that grows to the largest size asked of it and is never zeroed: for operands
// that the caller overwrites whole before reading (a std::vector's resize value-initialises
// every element first, a pass over memory that showed as 3% of an N = 1 LSTM call in perf).
template <typename T>
class Scratch {
  static_assert(std::is_trivially_default_constructible_v<T>, "Scratch leaves T uninitialised");

 public:
  T* get(int64_t n) {
    if (n > size_) {
      data_.reset(new T[size_t(n)]);
      size_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  int64_t size_ = 0;
};

}  // namespace cpu
}  // namespace rnnkit

// Parallel loops split between threads in proportion to how fast each thread ran them lately.
//
// On a virtual machine one core can run at about half the other's speed for seconds at a time
// (a neighbour on its sibling hyperthread; docs/kernels.md, "Uneven cores"), and an even split
// then makes every step of a layer wait for the slow core. balanced_for gives each thread one
// contiguous share of a loop, sized by the thread's rate on the loop's earlier runs (a
// ThreadRates, which the caller keeps across the steps of a call), and times the shares to
// update those rates. A share moves only as far as the rates do, so a thread keeps most of what
// it ran the step before: for the step products, its columns of W_hh, which stay in its own L2.
#pragma once

#include <ATen/Parallel.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace rnnkit {
namespace cpu {

// Each thread's recent rate on one loop, relative to the team's mean: 1 for every thread at
// first, then moved a quarter of the way toward what each timed run showed.
class ThreadRates {
 public:
  static constexpr int kMaxThreads = 64;

  ThreadRates() { std::fill(weight_, weight_ + kMaxThreads, 1.0f); }

  // bounds[0..team]: thread t runs [bounds[t], bounds[t + 1]) of [0, n), each inner bound a
  // multiple of grain and each share at least one grain where n allows it.
  void split(int team, int64_t n, int64_t grain, int64_t* bounds) const {
    float total = 0.0f;
    for (int t = 0; t < team; ++t) total += weight_[t];
    const bool each = n >= team * grain;
    float before = 0.0f;
    bounds[0] = 0;
    for (int t = 1; t < team; ++t) {
      before += weight_[t - 1];
      int64_t at = static_cast<int64_t>(before / total * float(n) / float(grain) + 0.5f) * grain;
      if (each) at = std::clamp(at, bounds[t - 1] + grain, n - (team - t) * grain);
      bounds[t] = std::clamp(at, bounds[t - 1], n);
    }
    bounds[team] = n;
  }

  // One run's shares (as split gave them) and each thread's seconds on its share. A run in
  // which a thread had nothing, or too little to time, changes nothing.
  void record(int team, const int64_t* bounds, const double* seconds) {
    double rate[kMaxThreads], sum = 0.0;
    for (int t = 0; t < team; ++t) {
      const int64_t items = bounds[t + 1] - bounds[t];
      if (items <= 0 || seconds[t] < kShortest) return;
      rate[t] = double(items) / seconds[t];
      sum += rate[t];
    }
    for (int t = 0; t < team; ++t) {
      const float relative = std::clamp(float(rate[t] * team / sum), 0.25f, 4.0f);
      weight_[t] += kStep * (relative - weight_[t]);
    }
  }

 private:
  static constexpr double kShortest = 2e-6;  // a share timed shorter than this is mostly noise
  static constexpr float kStep = 0.25f;
  float weight_[kMaxThreads];
};

// f(begin, end) over [0, n) on the threads, one share each as rates splits it (in multiples of
// grain); then rates learns from how long each share took. Inline (one share) with one thread,
// or inside another parallel region.
template <typename F>
void balanced_for(ThreadRates& rates, int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int team = static_cast<int>(std::min<int64_t>(
      {at::get_num_threads(), (n + grain - 1) / grain, ThreadRates::kMaxThreads}));
  if (team <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  int64_t bounds[ThreadRates::kMaxThreads + 1];
  double seconds[ThreadRates::kMaxThreads];
  rates.split(team, n, grain, bounds);
  bool timed = true;
#pragma omp parallel num_threads(team)
  {
    const int t = omp_get_thread_num(), got = omp_get_num_threads();
    if (got == team) {
      const auto start = std::chrono::steady_clock::now();
      if (bounds[t] < bounds[t + 1]) f(bounds[t], bounds[t + 1]);
      seconds[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    } else {  // fewer threads than asked for: even shares, not timed
      const int64_t chunk = ((n + grain - 1) / grain + got - 1) / got * grain;
      const int64_t b0 = std::min(n, t * chunk), b1 = std::min(n, b0 + chunk);
      if (b0 < b1) f(b0, b1);
      if (t == 0) timed = false;
    }
  }
  if (timed) rates.record(team, bounds, seconds);
}

}  // namespace cpu
}  // namespace rnnkit

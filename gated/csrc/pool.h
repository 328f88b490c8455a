// Reuse of the kernels' large buffers (included by recurrence.cpp).
//
// glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages from the
// kernel, which fault in one 4 KiB page at a time: a fresh 67 MB buffer cost 18-20 ms to fill on
// the development machine against 0.7-0.8 ms for a reused one (scripts/tiled_microbench.py). The activations, their gradients and the
// weight-gradient operands of a train step pass that size at the benchmark shapes (256 x 64 x
// 1024 floats), so they come from this pool: a buffer whose storage nobody else holds any more
// (its saved tensors died with the autograd graph) is handed out again for the same byte size.
// At most kSlots buffers are kept; release() drops the idle ones (fused_cpu.empty_cache()).
#pragma once

#include <ATen/ATen.h>

#include <mutex>
#include <vector>

namespace pool {

constexpr int64_t kMinBytes = int64_t(32) << 20;  // below this glibc's heap reuses memory itself
constexpr size_t kSlots = 16;

inline bool& enabled() {
  static bool on = true;
  return on;
}

inline std::mutex& lock() {
  static std::mutex m;
  return m;
}

inline std::vector<at::Tensor>& slots() {
  static std::vector<at::Tensor> s;
  return s;
}

inline bool idle(const at::Tensor& t) { return t.storage().use_count() == 1; }

// An uninitialised tensor of these sizes; large ones are reused when an idle one has the size.
inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const int64_t bytes = c10::multiply_integers(sizes) * int64_t(c10::elementSize(opts.dtype().toScalarType()));
  if (!enabled() || bytes < kMinBytes) return at::empty(sizes, opts);
  std::lock_guard<std::mutex> guard(lock());
  auto& s = slots();
  for (const at::Tensor& t : s) {
    if (idle(t) && t.dtype() == opts.dtype() && int64_t(t.nbytes()) == bytes) return t.view(sizes);
  }
  at::Tensor fresh = at::empty({bytes / int64_t(c10::elementSize(opts.dtype().toScalarType()))}, opts);
  if (s.size() >= kSlots) {  // make room by dropping an idle buffer; if none is idle, keep none
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (idle(*it)) {
        s.erase(it);
        break;
      }
    }
  }
  if (s.size() < kSlots) s.push_back(fresh);
  return fresh.view(sizes);
}

// Drop every idle buffer (the ones in use are dropped by their last user); returns bytes freed.
inline int64_t release() {
  std::lock_guard<std::mutex> guard(lock());
  auto& s = slots();
  int64_t freed = 0;
  std::vector<at::Tensor> keep;
  for (at::Tensor& t : s) {
    if (idle(t)) {
      freed += int64_t(t.nbytes());
    } else {
      keep.push_back(t);
    }
  }
  s.swap(keep);
  return freed;
}

}  // namespace pool

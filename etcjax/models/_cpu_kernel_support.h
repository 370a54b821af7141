// Shared by the XLA:CPU FFI kernels of etcjax/models (_depthwise_cpu.cc,
// _attention_cpu.cc): a portable 8-float vector type, the x86-64 clone
// attribute, and a batch splitter over XLA's intra-op thread pool.

#ifndef ETCJAX_MODELS_CPU_KERNEL_SUPPORT_H_
#define ETCJAX_MODELS_CPU_KERNEL_SUPPORT_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace etcjax {

namespace ffi = xla::ffi;

// Eight floats; GCC and Clang lower it to one AVX register or two SSE/NEON
// registers, so the same source serves every target.
typedef float v8 __attribute__((vector_size(32)));

// x86-64 machines get an AVX2+FMA clone (x86-64-v3), picked at load time
// by CPU features, and the baseline for CPUs without them; other compilers
// and architectures the compiler's default target. (GCC's "arch=haswell"
// clone would be picked only on Intel Haswell-family CPUs.) An
// x86-64-v4 (AVX-512) clone of the depthwise 8-float loops measured no
// faster on an AVX-512 EPYC.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ >= 12
#define ETCJAX_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ETCJAX_CLONES
#endif

#define ETCJAX_INLINE inline __attribute__((always_inline))

ETCJAX_INLINE v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

ETCJAX_INLINE void store(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

// sum_i x[i] * y[i] over n floats: eight partial sums, then the tail.
ETCJAX_INLINE float dot(const float* x, const float* y, int64_t n) {
  v8 sums = v8{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) sums += load(x + i) * load(y + i);
  float total = 0.0f;
  for (; i < n; ++i) total += x[i] * y[i];
  for (int e = 0; e < 8; ++e) total += sums[e];
  return total;
}

// Runs body(chunk, i0, i1) for `chunks` equal parts of [0, n), on the
// calling thread and XLA's intra-op thread pool. A training step's other ops
// use both cores of a 2-core CPU; one thread here left one idle during the
// kernel. Chunks are claimed from a counter, so the calling thread never
// waits for a task the pool has not started (the pool may be busy with other
// ops, or be the caller's own pool): it runs unclaimed chunks itself and
// waits only for chunks other threads are running. Tasks that start after
// every chunk is claimed touch only the shared state and return.
template <typename F>
void for_each_chunk(ffi::ThreadPool& pool, int64_t n, int64_t chunks,
                    const F& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  const F* f = &body;
  auto work = [state, f, chunks, n]() {
    for (;;) {
      const int64_t c = state->next.fetch_add(1);
      if (c >= chunks) return;
      (*f)(c, c * n / chunks, (c + 1) * n / chunks);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < chunks; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == chunks; });
}

}  // namespace etcjax

#endif  // ETCJAX_MODELS_CPU_KERNEL_SUPPORT_H_

// LayerNorm over the last axis for XLA:CPU, called through the XLA FFI
// (etcjax/models/layer_norm.py uses it for float32 on the CPU backend).
//
// XLA:CPU runs a LayerNorm as separate reduction and elementwise passes over
// the tokens, each at a few GB/s (ViT-Ti/16's 25 LayerNorms took ~85 ms of
// a ~1.8 s training step at batch 16, PyTorch's ~29 ms). Here one row (a
// token's D features) is normalised, or differentiated, while it is in L1.
//
//   forward:   mean, rstd = 1 / sqrt(mean((x - mean)^2) + epsilon),
//              y = (x - mean) * rstd * scale + bias
//   backward:  xhat = (x - mean) * rstd, g = dy * scale,
//              dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//              dscale = sum_rows dy * xhat, dbias = sum_rows dy
// All float32, rows [R, D] row-major; statistics are two-pass, as
// layer_norm.py's XLA formulation.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "_cpu_kernel_support.h"

namespace ffi = xla::ffi;

namespace {

using etcjax::dot;
using etcjax::for_each_chunk;

// Eight partial sums, then the tail, as `dot`: any D works.
ETCJAX_INLINE float row_sum(const float* x, int64_t d) {
  float sums[8] = {};
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    for (int e = 0; e < 8; ++e) sums[e] += x[c + e];
  }
  float total = 0.0f;
  for (; c < d; ++c) total += x[c];
  for (int e = 0; e < 8; ++e) total += sums[e];
  return total;
}

// Rows [r0, r1) of the forward pass.
ETCJAX_CLONES void forward(const float* x, const float* scale,
                           const float* bias, int64_t d, float epsilon,
                           int64_t r0, int64_t r1, float* y, float* mean,
                           float* rstd) {
  std::vector<float> centered(d);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * d;
    const float m = row_sum(xr, d) / d;
    for (int64_t c = 0; c < d; ++c) centered[c] = xr[c] - m;
    const float var = dot(centered.data(), centered.data(), d) / d;
    const float s = 1.0f / std::sqrt(var + epsilon);
    float* yr = y + r * d;
    for (int64_t c = 0; c < d; ++c) yr[c] = centered[c] * s * scale[c] + bias[c];
    mean[r] = m;
    rstd[r] = s;
  }
}

// Rows [r0, r1) of the backward pass; adds this chunk's dscale and dbias
// to `sums` ([2, D]).
ETCJAX_CLONES void backward(const float* x, const float* scale,
                            const float* mean, const float* rstd,
                            const float* dy, int64_t d, int64_t r0,
                            int64_t r1, float* dx, float* sums) {
  std::vector<float> xhat(d), g(d);
  float* dscale = sums;
  float* dbias = sums + d;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    const float m = mean[r], s = rstd[r];
    for (int64_t c = 0; c < d; ++c) {
      xhat[c] = (xr[c] - m) * s;
      g[c] = dyr[c] * scale[c];
      dscale[c] += dyr[c] * xhat[c];
      dbias[c] += dyr[c];
    }
    const float mean_g = row_sum(g.data(), d) / d;
    const float mean_gx = dot(g.data(), xhat.data(), d) / d;
    float* dxr = dx + r * d;
    for (int64_t c = 0; c < d; ++c) {
      dxr[c] = s * (g[c] - mean_g - xhat[c] * mean_gx);
    }
  }
}

int64_t chunk_count(ffi::ThreadPool& pool, int64_t rows) {
  // Chunks of at least 64 rows: smaller ones cost more to schedule than
  // to compute.
  return std::max<int64_t>(
      1, std::min<int64_t>(rows / 64, pool.num_threads()));
}

// x is [R, D]; `vector` (scale or bias) must be [D].
ffi::Error check_vector(int64_t d, ffi::Span<const int64_t> vector,
                        const char* name) {
  if (d < 1 || vector[0] != d) {
    return ffi::Error::InvalidArgument(
        std::string("etcjax layer_norm kernel: x must be [R, D >= 1] and ") +
        name + " [D]; got D=" + std::to_string(d) + ", " + name + " [" +
        std::to_string(vector[0]) + "]");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::BufferR2<ffi::F32> x,
                       ffi::BufferR1<ffi::F32> scale,
                       ffi::BufferR1<ffi::F32> bias,
                       ffi::ResultBufferR2<ffi::F32> y,
                       ffi::ResultBufferR1<ffi::F32> mean,
                       ffi::ResultBufferR1<ffi::F32> rstd, float epsilon) {
  const int64_t rows = x.dimensions()[0], d = x.dimensions()[1];
  for (auto [vector, name] : {std::pair{scale.dimensions(), "scale"},
                               std::pair{bias.dimensions(), "bias"}}) {
    ffi::Error error = check_vector(d, vector, name);
    if (error.failure()) return error;
  }
  for_each_chunk(pool, rows, chunk_count(pool, rows),
                 [&](int64_t, int64_t r0, int64_t r1) {
                   forward(x.typed_data(), scale.typed_data(),
                           bias.typed_data(), d, epsilon, r0, r1,
                           y->typed_data(), mean->typed_data(),
                           rstd->typed_data());
                 });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::BufferR2<ffi::F32> x,
                        ffi::BufferR1<ffi::F32> scale,
                        ffi::BufferR1<ffi::F32> mean,
                        ffi::BufferR1<ffi::F32> rstd,
                        ffi::BufferR2<ffi::F32> dy,
                        ffi::ResultBufferR2<ffi::F32> dx,
                        ffi::ResultBufferR1<ffi::F32> dscale,
                        ffi::ResultBufferR1<ffi::F32> dbias) {
  const int64_t rows = x.dimensions()[0], d = x.dimensions()[1];
  ffi::Error error = check_vector(d, scale.dimensions(), "scale");
  if (error.failure()) return error;
  if (dy.dimensions()[0] != rows || dy.dimensions()[1] != d ||
      mean.dimensions()[0] != rows || rstd.dimensions()[0] != rows) {
    return ffi::Error::InvalidArgument(
        "etcjax layer_norm backward: dy must have x's shape and mean, rstd "
        "one value per row");
  }
  // One [dscale; dbias] partial per chunk, added in chunk order: the same
  // sums whichever thread ran which chunk.
  const int64_t chunks = chunk_count(pool, rows);
  std::vector<float> sums(chunks * 2 * d, 0.0f);
  for_each_chunk(pool, rows, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    backward(x.typed_data(), scale.typed_data(), mean.typed_data(),
             rstd.typed_data(), dy.typed_data(), d, r0, r1,
             dx->typed_data(), sums.data() + c * 2 * d);
  });
  for (int64_t c = 1; c < chunks; ++c) {
    for (int64_t i = 0; i < 2 * d; ++i) sums[i] += sums[c * 2 * d + i];
  }
  std::copy(sums.begin(), sums.begin() + d, dscale->typed_data());
  std::copy(sums.begin() + d, sums.begin() + 2 * d, dbias->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxLayerNormForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR2<ffi::F32>>()
                                  .Arg<ffi::BufferR1<ffi::F32>>()
                                  .Arg<ffi::BufferR1<ffi::F32>>()
                                  .Ret<ffi::BufferR2<ffi::F32>>()
                                  .Ret<ffi::BufferR1<ffi::F32>>()
                                  .Ret<ffi::BufferR1<ffi::F32>>()
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxLayerNormBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR2<ffi::F32>>()
                                  .Arg<ffi::BufferR1<ffi::F32>>()
                                  .Arg<ffi::BufferR1<ffi::F32>>()
                                  .Arg<ffi::BufferR1<ffi::F32>>()
                                  .Arg<ffi::BufferR2<ffi::F32>>()
                                  .Ret<ffi::BufferR2<ffi::F32>>()
                                  .Ret<ffi::BufferR1<ffi::F32>>()
                                  .Ret<ffi::BufferR1<ffi::F32>>());

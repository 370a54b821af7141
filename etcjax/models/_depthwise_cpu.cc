// Depthwise k x k convolution kernels for XLA:CPU, called through the XLA FFI
// (etcjax/models/depthwise_cpu_kernel.py registers them; depthwise_conv.py's
// 'native' method uses them).
//
// XLA:CPU runs a grouped convolution like a dense one, and its fused
// shifted-sum loop reaches ~12 GFLOP/s on a core that does ~100 in a matmul.
// These loops keep a block of channels in vector registers (channels are the
// innermost, contiguous axis of NHWC) and read each input vector straight
// from a zero-padded copy of one image, so no bounds checks are left in the
// inner loops.
//
// Two kernels, both on float32 NHWC arrays:
//   correlate:     y[n,h,w,c]  = sum_{i,j} x[n, h+i-pt, w+j-pl, c] * t[i,j,c]
//   tap_gradient:  dt[i,j,c]   = sum_{n,h,w} x[n, h+i-pt, w+j-pl, c] * g[n,h,w,c]
// with zeros outside x. The forward pass is `correlate` with the 'SAME'
// offsets, the input gradient is `correlate` of the output gradient with the
// flipped taps, and the kernel gradient is `tap_gradient`.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "_cpu_kernel_support.h"

namespace ffi = xla::ffi;

namespace {

using etcjax::for_each_chunk;
using etcjax::load;
using etcjax::store;
using etcjax::v8;

struct Shape {
  int64_t n, h, w, c, k, pad_top, pad_left;
  int64_t hp() const { return h + k - 1; }
  int64_t wp() const { return w + k - 1; }
  int64_t blocks() const { return (c + 7) / 8; }  // channel blocks of 8
};

// Per-image scratch in a channel-blocked layout [C/8][rows][cols][8]: the
// inner loops then read consecutive 32-byte vectors. Read straight from NHWC,
// neighbouring pixels of one channel block are C floats apart, a power of two
// that maps the k*k taps' loads onto a few L1 cache sets (measured: 2.5x
// slower).
//
// Copies image `n` of an NHWC array into `blocked` ([blocks][rows][cols][8],
// whose border and channel padding the caller zeroed), at row offset `top`
// and column offset `left`.
void to_blocked(const float* x, const Shape& s, int64_t n, int64_t rows,
                int64_t cols, int64_t top, int64_t left, float* blocked) {
  const float* xn = x + n * s.h * s.w * s.c;
  for (int64_t h = 0; h < s.h; ++h) {
    for (int64_t w = 0; w < s.w; ++w) {
      const float* src = xn + (h * s.w + w) * s.c;
      float* dst = blocked + ((h + top) * cols + w + left) * 8;
      for (int64_t b = 0; b < s.blocks(); ++b) {
        const int64_t count = s.c - 8 * b < 8 ? s.c - 8 * b : 8;
        std::memcpy(dst + b * rows * cols * 8, src + 8 * b,
                    count * sizeof(float));
      }
    }
  }
}

// taps [k, k, C] -> [blocks][k][k][8], channel padding zero.
std::vector<float> taps_blocked(const float* taps, const Shape& s) {
  std::vector<float> out(s.blocks() * s.k * s.k * 8, 0.0f);
  for (int64_t t = 0; t < s.k * s.k; ++t) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      out[((ch / 8) * s.k * s.k + t) * 8 + ch % 8] = taps[t * s.c + ch];
    }
  }
  return out;
}

// R consecutive outputs y[h][w .. w+R) of one channel block, accumulated in
// registers; each tap vector loaded once serves all R.
template <int R>
ETCJAX_INLINE void correlate_strip(const float* plane, const float* tb,
                                   const Shape& s, int64_t h, int64_t w,
                                   v8* out) {
  const int64_t k = s.k, wp = s.wp();
  v8 acc[R] = {};
  for (int64_t i = 0; i < k; ++i) {
    const float* xr = plane + ((h + i) * wp + w) * 8;
    const float* tr = tb + i * k * 8;
    for (int64_t j = 0; j < k; ++j) {
      const v8 t = load(tr + j * 8);
      for (int r = 0; r < R; ++r) acc[r] += load(xr + (r + j) * 8) * t;
    }
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

ETCJAX_INLINE void store_block(float* dst, v8 v, int64_t count) {
  if (count == 8) {
    store(dst, v);
  } else {
    for (int64_t e = 0; e < count; ++e) dst[e] = v[e];
  }
}

// Images [n0, n1) of the forward correlation.
ETCJAX_CLONES void correlate(const float* x, const float* tb, float* y,
                             const Shape& s, int64_t n0, int64_t n1) {
  const int64_t hp = s.hp(), wp = s.wp();
  std::vector<float> padded(s.blocks() * hp * wp * 8, 0.0f);
  constexpr int R = 8;
  for (int64_t n = n0; n < n1; ++n) {
    to_blocked(x, s, n, hp, wp, s.pad_top, s.pad_left, padded.data());
    float* yn = y + n * s.h * s.w * s.c;
    for (int64_t b = 0; b < s.blocks(); ++b) {
      const float* plane = padded.data() + b * hp * wp * 8;
      const float* tbb = tb + b * s.k * s.k * 8;
      const int64_t count = s.c - 8 * b < 8 ? s.c - 8 * b : 8;
      for (int64_t h = 0; h < s.h; ++h) {
        float* yrow = yn + h * s.w * s.c + 8 * b;
        v8 out[R];
        int64_t w = 0;
        for (; w + R <= s.w; w += R) {
          correlate_strip<R>(plane, tbb, s, h, w, out);
          for (int r = 0; r < R; ++r) {
            store_block(yrow + (w + r) * s.c, out[r], count);
          }
        }
        for (; w < s.w; ++w) {
          correlate_strip<1>(plane, tbb, s, h, w, out);
          store_block(yrow + w * s.c, out[0], count);
        }
      }
    }
  }
}

// Adds taps (i, j0 .. j0 + J) of one channel block's kernel gradient from
// output row h to `sums` ([k][k] vectors): J accumulators stay in registers
// over the row. Row by row keeps the k input rows and the gradient row a
// pass reads in L1 (a whole image per pass streamed them from L2: 1.5x
// slower).
template <int J>
ETCJAX_INLINE void tap_gradient_row(const float* plane, const float* gplane,
                                    const Shape& s, int64_t h, int64_t i,
                                    int64_t j0, float* sums) {
  v8 acc[J];
  for (int j = 0; j < J; ++j) acc[j] = load(sums + (i * s.k + j0 + j) * 8);
  const float* xr = plane + ((h + i) * s.wp() + j0) * 8;
  const float* gr = gplane + h * s.w * 8;
  for (int64_t w = 0; w < s.w; ++w) {
    const v8 gv = load(gr + w * 8);
    for (int j = 0; j < J; ++j) acc[j] += load(xr + (w + j) * 8) * gv;
  }
  for (int j = 0; j < J; ++j) store(sums + (i * s.k + j0 + j) * 8, acc[j]);
}

// Adds images [n0, n1)' kernel gradient to `total` ([blocks][k][k][8]).
ETCJAX_CLONES void tap_gradient(const float* x, const float* g,
                                const Shape& s, int64_t n0, int64_t n1,
                                double* total) {
  const int64_t hp = s.hp(), wp = s.wp(), kk = s.k * s.k;
  std::vector<float> padded(s.blocks() * hp * wp * 8, 0.0f);
  std::vector<float> gb(s.blocks() * s.h * s.w * 8, 0.0f);
  std::vector<float> sums(kk * 8);  // [k][k][8]
  // Per-image sums are float (H*W terms); the batch total is float64.
  for (int64_t n = n0; n < n1; ++n) {
    to_blocked(x, s, n, hp, wp, s.pad_top, s.pad_left, padded.data());
    to_blocked(g, s, n, s.h, s.w, 0, 0, gb.data());
    for (int64_t b = 0; b < s.blocks(); ++b) {
      const float* plane = padded.data() + b * hp * wp * 8;
      const float* gplane = gb.data() + b * s.h * s.w * 8;
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t h = 0; h < s.h; ++h) {
        for (int64_t i = 0; i < s.k; ++i) {
          // Up to 9 taps of a kernel row per pass: 9 accumulators and the
          // loaded vectors fit the 16 AVX registers.
          for (int64_t j0 = 0; j0 < s.k; j0 += 9) {
            switch (s.k - j0 < 9 ? s.k - j0 : 9) {
#define ETCJAX_CASE(J)                                                    \
  case J:                                                                 \
    tap_gradient_row<J>(plane, gplane, s, h, i, j0, sums.data());         \
    break;
              ETCJAX_CASE(1) ETCJAX_CASE(2) ETCJAX_CASE(3) ETCJAX_CASE(4)
              ETCJAX_CASE(5) ETCJAX_CASE(6) ETCJAX_CASE(7) ETCJAX_CASE(8)
              ETCJAX_CASE(9)
#undef ETCJAX_CASE
            }
          }
        }
      }
      double* tot = total + b * kk * 8;
      for (int64_t t = 0; t < kk; ++t) {
        for (int e = 0; e < 8; ++e) tot[t * 8 + e] += sums[t * 8 + e];
      }
    }
  }
}

int64_t chunk_count(ffi::ThreadPool& pool, const Shape& s) {
  return std::max<int64_t>(1, std::min<int64_t>(s.n, pool.num_threads()));
}

ffi::Error check(const ffi::BufferR4<ffi::F32>& x, int64_t k, int64_t pad_top,
                 int64_t pad_left, Shape* s) {
  auto d = x.dimensions();
  *s = Shape{d[0], d[1], d[2], d[3], k, pad_top, pad_left};
  if (k < 1 || pad_top < 0 || pad_left < 0 || pad_top >= k || pad_left >= k) {
    return ffi::Error::InvalidArgument(
        "etcjax depthwise kernel: need 0 <= pad_top, pad_left < k, got k=" +
        std::to_string(k) + " pad_top=" + std::to_string(pad_top) +
        " pad_left=" + std::to_string(pad_left));
  }
  return ffi::Error::Success();
}

ffi::Error CorrelateImpl(ffi::ThreadPool pool, ffi::BufferR4<ffi::F32> x,
                         ffi::BufferR3<ffi::F32> taps,
                         ffi::ResultBufferR4<ffi::F32> y, int64_t pad_top,
                         int64_t pad_left) {
  auto td = taps.dimensions();
  Shape s;
  ffi::Error error = check(x, td[0], pad_top, pad_left, &s);
  if (error.failure()) return error;
  if (td[1] != s.k || td[2] != s.c) {
    return ffi::Error::InvalidArgument(
        "etcjax depthwise correlate: taps must be [k, k, C]");
  }
  const std::vector<float> tb = taps_blocked(taps.typed_data(), s);
  for_each_chunk(pool, s.n, chunk_count(pool, s),
                 [&](int64_t, int64_t n0, int64_t n1) {
                   correlate(x.typed_data(), tb.data(), y->typed_data(), s,
                             n0, n1);
                 });
  return ffi::Error::Success();
}

ffi::Error TapGradientImpl(ffi::ThreadPool pool, ffi::BufferR4<ffi::F32> x,
                           ffi::BufferR4<ffi::F32> g,
                           ffi::ResultBufferR3<ffi::F32> dt, int64_t pad_top,
                           int64_t pad_left) {
  auto dd = dt->dimensions();
  Shape s;
  ffi::Error error = check(x, dd[0], pad_top, pad_left, &s);
  if (error.failure()) return error;
  auto gd = g.dimensions();
  if (gd[0] != s.n || gd[1] != s.h || gd[2] != s.w || gd[3] != s.c ||
      dd[1] != s.k || dd[2] != s.c) {
    return ffi::Error::InvalidArgument(
        "etcjax depthwise tap_gradient: g must have x's shape [N, H, W, C] "
        "and the result [k, k, C]");
  }
  // One float64 total per chunk, added in chunk order: the same sums
  // whichever thread ran which chunk.
  const int64_t chunks = chunk_count(pool, s), kk = s.k * s.k;
  const int64_t size = s.blocks() * kk * 8;
  std::vector<double> totals(chunks * size, 0.0);
  for_each_chunk(pool, s.n, chunks, [&](int64_t c, int64_t n0, int64_t n1) {
    tap_gradient(x.typed_data(), g.typed_data(), s, n0, n1,
                 totals.data() + c * size);
  });
  for (int64_t c = 1; c < chunks; ++c) {
    for (int64_t i = 0; i < size; ++i) totals[i] += totals[c * size + i];
  }
  float* out = dt->typed_data();
  for (int64_t t = 0; t < kk; ++t) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      out[t * s.c + ch] =
          static_cast<float>(totals[((ch / 8) * kk + t) * 8 + ch % 8]);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxDepthwiseCorrelate, CorrelateImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR3<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxDepthwiseTapGradient, TapGradientImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR3<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

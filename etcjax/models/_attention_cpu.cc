// Multi-head self-attention for XLA:CPU, called through the XLA FFI
// (etcjax/models/attention_cpu_kernel.py registers it; attention.py's
// 'native' method uses it).
//
// XLA:CPU runs attention's batched [L, K] x [K, L] products (one per image
// and head, L = 197 and K = 64 in ViT/16 at 224) at about 40 GFLOP/s on a
// core that does ~110 in a large matmul, writes the head-major copies of
// query, key and value and of the output, and runs the two backward
// products whose left operand is transposed outside its fast library. Here
// each (image, head) is one work item whose operands stay in L1/L2: left
// operands are read in place (from the fused QKV projection, the kept
// weights, dout), right operands are packed into 16-column panels, the
// products are register-tiled loops, the softmax runs on the rows while
// they are in cache, and the output and gradients are written in the
// token-major layouts the projections read.
//
// Layouts (float32, row-major):
//   qkv      [N, L, 3 * H * K]: query, key, value of token l at offsets
//            0, D, 2D (D = H * K), head h at h * K within each.
//   out      [N, L, D]: softmax(q k^T) v, head h at h * K.
//   weights  [N, H, L, Lp], Lp = L rounded up to 16: the softmax, zero in
//            the padding columns (kept for the backward pass).
//   dqkv     [N, L, 3 * D]: the gradient of qkv, laid out as qkv.
// The query is used as given: fold the 1/sqrt(K) scale into its projection.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "_cpu_kernel_support.h"

namespace ffi = xla::ffi;

namespace {

using etcjax::dot;
using etcjax::for_each_chunk;
using etcjax::load;
using etcjax::store;
using etcjax::v8;

typedef int32_t v8i __attribute__((vector_size(32)));

// Output tiles of kRows x 16: 12 accumulators, two loaded B vectors and a
// broadcast fit the 16 AVX registers.
constexpr int kRows = 6;
constexpr int64_t kCols = 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Shape {
  int64_t n, l, heads, k;
  int64_t d() const { return heads * k; }
  int64_t lp() const { return round_up(l, kCols); }  // weights row length
  int64_t kp() const { return round_up(k, kCols); }  // scratch row length
};

// A matrix operand read in place: element (row r, depth p) at
// data[r * row_stride + p * depth_stride]; a transposed operand only swaps
// the strides, so no product needs a transposed copy.
struct Operand {
  const float* data;
  int64_t row_stride, depth_stride;
};

// c[r][0, 16) = sum_{p < depth} a(r, p) * panel[p][0, 16) for R rows.
template <int R>
ETCJAX_INLINE void tile(Operand a, const float* panel, int64_t depth,
                        float* c, int64_t ldc) {
  v8 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = v8{};
  for (int64_t p = 0; p < depth; ++p) {
    const v8 b0 = load(panel + p * kCols), b1 = load(panel + p * kCols + 8);
    const float* ap = a.data + p * a.depth_stride;
    for (int r = 0; r < R; ++r) {
      const float x = ap[r * a.row_stride];
      lo[r] += x * b0;
      hi[r] += x * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store(c + r * ldc, lo[r]);
    store(c + r * ldc + 8, hi[r]);
  }
}

// c[m, cols] = a[m, depth] b[depth, cols], cols a multiple of 16, with b
// packed as panels of 16 columns ([cols / 16][depth][16], see pack) and c
// row-major with row stride ldc. Panels outermost: one panel (depth x 16
// contiguous floats) stays in L1 while every row of a passes it.
ETCJAX_INLINE void matmul(Operand a, const float* b, float* c, int64_t ldc,
                          int64_t m, int64_t cols, int64_t depth) {
  for (int64_t j = 0; j < cols; j += kCols) {
    const float* panel = b + j * depth;
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows) {
      Operand ai{a.data + i * a.row_stride, a.row_stride, a.depth_stride};
      tile<kRows>(ai, panel, depth, c + i * ldc + j, ldc);
    }
    Operand ai{a.data + i * a.row_stride, a.row_stride, a.depth_stride};
    switch (m - i) {
#define ETCJAX_CASE(R)                                \
  case R:                                             \
    tile<R>(ai, panel, depth, c + i * ldc + j, ldc);  \
    break;
      ETCJAX_CASE(1) ETCJAX_CASE(2) ETCJAX_CASE(3) ETCJAX_CASE(4)
      ETCJAX_CASE(5)
#undef ETCJAX_CASE
      default:
        break;
    }
  }
}

// exp(x) for x <= 0 (softmax logits minus their row maximum): Cephes'
// expf polynomial after reduction by a multiple of ln 2 (about 1 ulp);
// arguments below -87 give exp(-87) ~ 1.6e-38 instead of less.
ETCJAX_INLINE v8 exp_nonpositive(v8 x) {
  const v8 lowest = v8{} - 87.0f;
  x = x < lowest ? lowest : x;
  // Adding 1.5 * 2^23 rounds to an integer; subtracting it gives n exactly.
  const v8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  v8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v8 p = v8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v8 y = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

ETCJAX_INLINE v8 max8(v8 a, v8 b) { return a > b ? a : b; }

// Row-wise softmax of s [l, lp] in place over the first l columns; the
// padding columns become 0. Every pass is over whole vectors: a scalar
// maximum's dependency chain made the softmax cost half of the products.
ETCJAX_INLINE void softmax_rows(float* s, int64_t l, int64_t lp) {
  for (int64_t i = 0; i < l; ++i) {
    float* row = s + i * lp;
    // exp(-inf) comes out as ~1.6e-38 (see exp_nonpositive), nothing
    // against a total of at least 1; the padding is zeroed below.
    for (int64_t j = l; j < lp; ++j) row[j] = -INFINITY;
    v8 tops = load(row);
    for (int64_t j = 8; j < lp; j += 8) tops = max8(tops, load(row + j));
    float top = tops[0];
    for (int e = 1; e < 8; ++e) top = std::max(top, tops[e]);
    v8 sums = v8{};
    for (int64_t j = 0; j < lp; j += 8) {
      const v8 e = exp_nonpositive(load(row + j) - top);
      store(row + j, e);
      sums += e;
    }
    float total = 0.0f;
    for (int e = 0; e < 8; ++e) total += sums[e];
    const float inv = 1.0f / total;
    for (int64_t j = 0; j < lp; j += 8) store(row + j, load(row + j) * inv);
    for (int64_t j = l; j < lp; ++j) row[j] = 0.0f;
  }
}

// A [L, K] block of a larger row-major array: one head's rows (row stride
// ld) in qkv, out, dout or dqkv.
struct Head {
  const float* data;
  int64_t ld;
};

// Head h of image n in an array of token rows `width` floats apart whose
// head blocks start at column `offset`.
Head head_of(const float* array, const Shape& s, int64_t n, int64_t h,
             int64_t width, int64_t offset) {
  return Head{array + n * s.l * width + offset + h * s.k, width};
}

// Packs a head as the right operand of a product, in panels of 16 columns
// ([cols / 16][depth][16], zero beyond the head): as [L, K] (depth L, cols
// kp) or transposed, as [K, L] (depth K, cols lp). Read in place instead,
// the 197 rows of a panel are a qkv row (2304 bytes) apart and do not stay
// in cache while the rows of the left operand pass.
void pack(Head head, const Shape& s, bool transposed, float* dst) {
  if (!transposed) {
    for (int64_t j = 0; j < s.k; j += kCols) {
      const int64_t count = std::min<int64_t>(kCols, s.k - j);
      float* panel = dst + j * s.l;
      for (int64_t i = 0; i < s.l; ++i) {
        std::memcpy(panel + i * kCols, head.data + i * head.ld + j,
                    count * sizeof(float));
      }
    }
    return;
  }
  // 16 tokens at a time: each panel row gets 16 consecutive floats while
  // the 16 source rows stay in L1.
  for (int64_t i0 = 0; i0 < s.l; i0 += kCols) {
    const int64_t count = std::min<int64_t>(kCols, s.l - i0);
    float* panel = dst + i0 * s.k;
    for (int64_t d = 0; d < s.k; ++d) {
      for (int64_t i = 0; i < count; ++i) {
        panel[d * kCols + i] = head.data[(i0 + i) * head.ld + d];
      }
    }
  }
}

// Per-thread scratch, zeroed once: afterwards only the valid region of each
// buffer is written, so the padding stays zero.
class Scratch {
 public:
  explicit Scratch(int64_t size) : data_(size, 0.0f) {}
  // The next `size` floats.
  float* take(int64_t size) {
    float* p = data_.data() + used_;
    used_ += size;
    return p;
  }

 private:
  std::vector<float> data_;
  int64_t used_ = 0;
};

// A product's output rows [L, kp]: written in place in `target` when the
// head width K is a multiple of 16, else in `pad` and copied by `finish`.
struct Output {
  Output(float* target, int64_t ld, const Shape& s, float* pad)
      : target(target), ld(ld), s(s), pad(pad) {}
  float* rows() const { return pad ? pad : target; }
  int64_t stride() const { return pad ? s.kp() : ld; }
  void finish() const {
    if (pad == nullptr) return;
    for (int64_t i = 0; i < s.l; ++i) {
      std::memcpy(target + i * ld, pad + i * s.kp(), s.k * sizeof(float));
    }
  }
  float* target;
  int64_t ld;
  const Shape& s;
  float* pad;
};

// Work items [t0, t1) of the forward pass, item t = n * heads + h.
ETCJAX_CLONES void forward(const float* qkv, const Shape& s, int64_t t0,
                           int64_t t1, float* out, float* weights) {
  const int64_t l = s.l, lp = s.lp(), kp = s.kp(), d = s.d();
  const bool padded = s.k % kCols != 0;
  Scratch scratch(s.k * lp + lp * kp + (padded ? l * kp : 0));
  float* kt = scratch.take(s.k * lp);  // key^T, panels
  float* v = scratch.take(lp * kp);    // value, panels
  float* pad = padded ? scratch.take(l * kp) : nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / s.heads, h = t % s.heads;
    const Head q = head_of(qkv, s, n, h, 3 * d, 0);
    pack(head_of(qkv, s, n, h, 3 * d, d), s, true, kt);
    pack(head_of(qkv, s, n, h, 3 * d, 2 * d), s, false, v);
    float* p = weights + t * l * lp;
    matmul(Operand{q.data, q.ld, 1}, kt, p, lp, l, lp, s.k);
    softmax_rows(p, l, lp);
    const Output o(out + n * l * d + h * s.k, d, s, pad);
    matmul(Operand{p, lp, 1}, v, o.rows(), o.stride(), l, kp, l);
    o.finish();
  }
}

// Work items [t0, t1) of the backward pass.
ETCJAX_CLONES void backward(const float* qkv, const float* weights,
                            const float* out, const float* dout,
                            const Shape& s, int64_t t0, int64_t t1,
                            float* dqkv) {
  const int64_t l = s.l, lp = s.lp(), kp = s.kp(), d = s.d();
  const bool padded = s.k % kCols != 0;
  Scratch scratch(s.k * lp + l * lp + 3 * l * kp + (padded ? l * kp : 0));
  float* vt = scratch.take(s.k * lp);  // value^T, panels
  float* ds = scratch.take(l * lp);    // [l, lp]
  float* b[3];                         // key, query, dout: panels
  for (float*& panel : b) panel = scratch.take(l * kp);
  float* pad = padded ? scratch.take(l * kp) : nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / s.heads, h = t % s.heads;
    const Head dout_h = head_of(dout, s, n, h, d, 0);
    const Head o = head_of(out, s, n, h, d, 0);
    pack(head_of(qkv, s, n, h, 3 * d, 2 * d), s, true, vt);
    pack(head_of(qkv, s, n, h, 3 * d, d), s, false, b[0]);
    pack(head_of(qkv, s, n, h, 3 * d, 0), s, false, b[1]);
    pack(dout_h, s, false, b[2]);
    const float* p = weights + t * l * lp;
    // dweights = dout v^T, then the softmax's gradient
    // dlogits = weights * (dweights - sum_k dout * out) (zero in padding).
    matmul(Operand{dout_h.data, dout_h.ld, 1}, vt, ds, lp, l, lp, s.k);
    for (int64_t i = 0; i < l; ++i) {
      const float row = dot(dout_h.data + i * d, o.data + i * d, s.k);
      float* dsi = ds + i * lp;
      const float* pi = p + i * lp;
      for (int64_t j = 0; j < lp; j += 8) {
        store(dsi + j, load(pi + j) * (load(dsi + j) - row));
      }
    }
    // dquery = dlogits key; dkey = dlogits^T query; dvalue = weights^T dout.
    const Operand a[3] = {{ds, lp, 1}, {ds, 1, lp}, {p, 1, lp}};
    for (int slot = 0; slot < 3; ++slot) {
      const Output g(dqkv + n * l * 3 * d + slot * d + h * s.k, 3 * d, s,
                     pad);
      matmul(a[slot], b[slot], g.rows(), g.stride(), l, kp, l);
      g.finish();
    }
  }
}

int64_t chunk_count(ffi::ThreadPool& pool, int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(items, pool.num_threads()));
}

std::string dims(ffi::Span<const int64_t> d) {
  std::string text = "[";
  for (size_t i = 0; i < d.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(d[i]);
  }
  return text + "]";
}

// Reads the shape from qkv [N, L, 3 * heads * K] and checks every other
// buffer's dimensions against it.
ffi::Error check(ffi::Span<const int64_t> qkv, int64_t heads,
                 ffi::Span<const int64_t> out,
                 ffi::Span<const int64_t> weights, Shape* s) {
  if (heads < 1 || qkv[2] % (3 * heads) != 0 || qkv[1] < 1) {
    return ffi::Error::InvalidArgument(
        "etcjax attention kernel: qkv must be [N, L >= 1, 3 * heads * K], "
        "got " + dims(qkv) + " with heads=" + std::to_string(heads));
  }
  *s = Shape{qkv[0], qkv[1], heads, qkv[2] / (3 * heads)};
  const int64_t want_out[] = {s->n, s->l, s->d()};
  const int64_t want_weights[] = {s->n, s->heads, s->l, s->lp()};
  if (!std::equal(out.begin(), out.end(), want_out) ||
      !std::equal(weights.begin(), weights.end(), want_weights)) {
    return ffi::Error::InvalidArgument(
        "etcjax attention kernel: for qkv " + dims(qkv) +
        " the output must be [N, L, D] and the weights [N, heads, L, "
        "round_up(L, 16)], got " + dims(out) + " and " + dims(weights));
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::BufferR3<ffi::F32> qkv,
                       ffi::ResultBufferR3<ffi::F32> out,
                       ffi::ResultBufferR4<ffi::F32> weights, int64_t heads) {
  Shape s;
  ffi::Error error = check(qkv.dimensions(), heads, out->dimensions(),
                           weights->dimensions(), &s);
  if (error.failure()) return error;
  const int64_t items = s.n * s.heads;
  for_each_chunk(pool, items, chunk_count(pool, items),
                 [&](int64_t, int64_t t0, int64_t t1) {
                   forward(qkv.typed_data(), s, t0, t1, out->typed_data(),
                           weights->typed_data());
                 });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::BufferR3<ffi::F32> qkv,
                        ffi::BufferR4<ffi::F32> weights,
                        ffi::BufferR3<ffi::F32> out,
                        ffi::BufferR3<ffi::F32> dout,
                        ffi::ResultBufferR3<ffi::F32> dqkv, int64_t heads) {
  Shape s;
  ffi::Error error = check(qkv.dimensions(), heads, out.dimensions(),
                           weights.dimensions(), &s);
  if (error.failure()) return error;
  auto dd = dout.dimensions();
  auto gd = dqkv->dimensions();
  if (!std::equal(dd.begin(), dd.end(), out.dimensions().begin()) ||
      !std::equal(gd.begin(), gd.end(), qkv.dimensions().begin())) {
    return ffi::Error::InvalidArgument(
        "etcjax attention backward: dout must have out's shape " +
        dims(out.dimensions()) + " and dqkv qkv's " + dims(qkv.dimensions()) +
        ", got " + dims(dd) + " and " + dims(gd));
  }
  const int64_t items = s.n * s.heads;
  for_each_chunk(pool, items, chunk_count(pool, items),
                 [&](int64_t, int64_t t0, int64_t t1) {
                   backward(qkv.typed_data(), weights.typed_data(),
                            out.typed_data(), dout.typed_data(), s, t0, t1,
                            dqkv->typed_data());
                 });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxAttentionForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR3<ffi::F32>>()
                                  .Ret<ffi::BufferR3<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Attr<int64_t>("heads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EtcjaxAttentionBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR3<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR3<ffi::F32>>()
                                  .Arg<ffi::BufferR3<ffi::F32>>()
                                  .Ret<ffi::BufferR3<ffi::F32>>()
                                  .Attr<int64_t>("heads"));

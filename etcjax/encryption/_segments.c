/* Host (CPU) kernel for encryption plans that move whole pixels.
 *
 * A plan of the `pixels` representation whose output can be cut into
 * segments of L consecutive pixels, each read from L source pixels at a
 * constant byte step with one channel map and one XOR mask per channel,
 * is applied segment by segment:
 *
 *   out[n, 3Ls + 3k + c] = x[n, source[s] + step[s]*k + cmap[s][c]] ^ mask[s][c]
 *
 * EtC's rows of 16-pixel blocks are such segments (step +-3 along a row,
 * +-3W down a column for the transposing symmetries). Segments with step
 * +-3, L = 16 and one mask byte are a 48-byte permutation of a contiguous
 * 48-byte source row: `pattern[s]` names one of the precomputed SSSE3
 * byte-shuffle masks (2 directions x 6 channel orders) and the segment is
 * done with 9 shuffles. Columns are made rows first: before segment s, the
 * source block at byte offset `transpose[s]` (if >= 0) is transposed into
 * `blocks` at `transpose_to[s]` (a buffer for one row of blocks, which
 * stays in L1), and segments with `from_block[s]` read rows there.
 * Other segments take the scalar loop. XLA's gather is elemental and
 * cannot use byte shuffles.
 *
 * The Python side (host_kernel.py) builds and verifies the tables; this
 * file trusts them. No numpy headers: arguments are buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <tmmintrin.h>
#define ETCJAX_X86 1
#endif

typedef struct {
  const int64_t *source;
  const int64_t *step;
  const int16_t *pattern;
  const uint8_t *cmap;   /* [S, 3] */
  const uint8_t *mask;   /* [S, 3] */
  const uint8_t *shuffles; /* [patterns, 3 out vectors, 3 in vectors, 16] */
  const uint8_t *from_block; /* [S] */
  const int64_t *transpose; /* [S] block corner to transpose first, or -1 */
  const int64_t *transpose_to; /* [S] where in `blocks` to put it */
  uint8_t *blocks; /* transposed source blocks */
  int64_t segments, length, pixels_bytes, row_bytes;
} Table;

/* Transposes the B x B-pixel block at byte offset `corner` of an image into
   `block` (rows of 3B bytes): pixel (i, j) of `block` is pixel (j, i) of
   the source block. 4-byte moves, each overwriting the spare byte of the
   previous one; the source's spare byte is in the image because a row
   follows. */
static void transpose_block(const uint8_t *x, uint8_t *block, int64_t corner,
                            int64_t row_bytes, int64_t b) {
  for (int64_t i = 0; i < b; i++) {
    uint8_t *dst = block + 3 * b * i;
    const uint8_t *src = x + corner + 3 * i;
    for (int64_t j = 0; j + 1 < b; j++) {
      uint32_t pixel;
      memcpy(&pixel, src + j * row_bytes, 4);
      memcpy(dst + 3 * j, &pixel, 4);
    }
    memcpy(dst + 3 * (b - 1), src + (b - 1) * row_bytes, 3);
  }
}

static void scalar_segment(const uint8_t *src, uint8_t *o, int64_t step,
                           int64_t length, const uint8_t *cm,
                           const uint8_t *m) {
  for (int64_t k = 0; k < length; k++) {
    const uint8_t *p = src + step * k;
    o[3 * k] = p[cm[0]] ^ m[0];
    o[3 * k + 1] = p[cm[1]] ^ m[1];
    o[3 * k + 2] = p[cm[2]] ^ m[2];
  }
}

#ifdef ETCJAX_X86
__attribute__((target("ssse3"))) static inline void shuffle_segment(
    const uint8_t *row, uint8_t *o, const uint8_t *masks, uint8_t m) {
  const __m128i a = _mm_loadu_si128((const __m128i *)row);
  const __m128i b = _mm_loadu_si128((const __m128i *)(row + 16));
  const __m128i c = _mm_loadu_si128((const __m128i *)(row + 32));
  const __m128i x = _mm_set1_epi8((char)m);
  for (int v = 0; v < 3; v++) {
    const uint8_t *mv = masks + 48 * v;
    __m128i r = _mm_or_si128(
        _mm_or_si128(
            _mm_shuffle_epi8(a, _mm_loadu_si128((const __m128i *)mv)),
            _mm_shuffle_epi8(b, _mm_loadu_si128((const __m128i *)(mv + 16)))),
        _mm_shuffle_epi8(c, _mm_loadu_si128((const __m128i *)(mv + 32))));
    _mm_storeu_si128((__m128i *)(o + 16 * v), _mm_xor_si128(r, x));
  }
}
#endif

/* One image, segment by segment. `shuffle` is a compile-time constant in
   each caller, so each variant is compiled without the other's branch. */
static inline __attribute__((always_inline)) void run_image(
    const Table *t, const uint8_t *xi, uint8_t *oi, const uint8_t *next,
    int shuffle) {
  /* Locals: stores through uint8_t pointers may alias anything, so fields
     read through `t` would be reloaded after every store. */
  const int64_t *restrict source = t->source,
                          *restrict step = t->step,
                          *restrict transpose = t->transpose,
                          *restrict transpose_to = t->transpose_to;
  const int16_t *restrict pattern = t->pattern;
  const uint8_t *restrict from_block = t->from_block,
                          *restrict cmap = t->cmap, *restrict mask = t->mask,
                          *restrict shuffles = t->shuffles;
  const int64_t segments = t->segments, length = t->length;
  uint8_t *block = t->blocks;
  const int64_t seg_bytes = 3 * length;
  for (int64_t s = 0; s < segments; s++) {
    /* The reads of a table jump around the image, which defeats the
       hardware prefetcher; without this, most time goes to waiting for
       memory. Requests the next image's lines in order, a little per
       segment (a burst would overflow the queue of pending misses). */
    __builtin_prefetch(next + s * seg_bytes);
    if (transpose[s] >= 0)
      transpose_block(xi, block + transpose_to[s], transpose[s], t->row_bytes,
                      length);
    uint8_t *o = oi + s * seg_bytes;
    const uint8_t *src = (from_block[s] ? block : xi) + source[s];
#ifdef ETCJAX_X86
    if (shuffle && pattern[s] >= 0) {
      /* The row's lowest address: its first pixel, or its last one when it
         is read backwards. */
      const uint8_t *row = step[s] > 0 ? src : src + 15 * step[s];
      shuffle_segment(row, o, shuffles + 144 * pattern[s], mask[3 * s]);
      continue;
    }
#endif
    scalar_segment(src, o, step[s], length, cmap + 3 * s, mask + 3 * s);
  }
}

static void run_scalar(const Table *t, const uint8_t *x, uint8_t *out,
                       int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *xi = x + i * t->pixels_bytes;
    run_image(t, xi, out + i * t->pixels_bytes,
              i + 1 < n ? xi + t->pixels_bytes : xi, 0);
  }
}

#ifdef ETCJAX_X86
__attribute__((target("ssse3"))) static void run_shuffles(
    const Table *t, const uint8_t *x, uint8_t *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *xi = x + i * t->pixels_bytes;
    run_image(t, xi, out + i * t->pixels_bytes,
              i + 1 < n ? xi + t->pixels_bytes : xi, 1);
  }
}
#endif

static void run(const Table *t, const uint8_t *x, uint8_t *out, int64_t n,
                int use_shuffles) {
#ifdef ETCJAX_X86
  if (use_shuffles) {
    run_shuffles(t, x, out, n);
    return;
  }
#endif
  run_scalar(t, x, out, n);
}

static int shuffles_supported(void) {
#ifdef ETCJAX_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("ssse3");
#else
  return 0;
#endif
}

/* apply(x, out, blocks, n, pixels_bytes, length, source, step,
 *       pattern, cmap, mask, shuffles, from_block, transpose, transpose_to,
 *       row_bytes, use_shuffles) */
static PyObject *apply(PyObject *self, PyObject *args) {
  Py_buffer x, out, blocks, source, step, pattern, cmap, mask, shuffles,
      from_block, transpose, transpose_to;
  long long n, pixels_bytes, length, row_bytes;
  int use_shuffles;
  if (!PyArg_ParseTuple(args, "y*w*w*LLLy*y*y*y*y*y*y*y*y*Lp", &x, &out,
                        &blocks, &n, &pixels_bytes, &length, &source, &step,
                        &pattern, &cmap, &mask, &shuffles, &from_block,
                        &transpose, &transpose_to, &row_bytes, &use_shuffles))
    return NULL;
  Table t = {source.buf, step.buf, pattern.buf, cmap.buf, mask.buf,
             shuffles.buf, from_block.buf, transpose.buf, transpose_to.buf,
             blocks.buf, (int64_t)(source.len / 8), (int64_t)length,
             (int64_t)pixels_bytes, (int64_t)row_bytes};
  PyObject *result = NULL;
  if (x.len < n * pixels_bytes || out.len < n * pixels_bytes ||
      from_block.len != t.segments || transpose.len != 8 * t.segments ||
      transpose_to.len != 8 * t.segments || blocks.len < row_bytes * length ||
      t.segments * 3 * t.length != pixels_bytes) {
    PyErr_SetString(PyExc_ValueError, "segment kernel: buffer sizes disagree");
  } else {
    Py_BEGIN_ALLOW_THREADS
    run(&t, x.buf, out.buf, n, use_shuffles && shuffles_supported());
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
  }
  PyBuffer_Release(&from_block);
  PyBuffer_Release(&transpose);
  PyBuffer_Release(&transpose_to);
  PyBuffer_Release(&blocks);
  PyBuffer_Release(&x);
  PyBuffer_Release(&out);
  PyBuffer_Release(&source);
  PyBuffer_Release(&step);
  PyBuffer_Release(&pattern);
  PyBuffer_Release(&cmap);
  PyBuffer_Release(&mask);
  PyBuffer_Release(&shuffles);
  return result;
}

static PyObject *has_shuffles(PyObject *self, PyObject *unused) {
  return PyBool_FromLong(shuffles_supported());
}

static PyMethodDef methods[] = {
    {"apply", apply, METH_VARARGS, "Applies a segment table to a batch."},
    {"has_shuffles", has_shuffles, METH_NOARGS,
     "Whether this CPU runs the SSSE3 byte-shuffle path."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_segments",
                                    "Host kernel for pixel-moving plans.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__segments(void) { return PyModule_Create(&module); }

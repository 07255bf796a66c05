/* Attention over a packed batch in bfloat16 with float32 scores, for CPUs with AVX-512 BF16.
 *
 * Why it exists: torch's fused CPU attention reaches a sixth of its products' rate on such a CPU
 * (docs/performance.md, "Where the bfloat16 gap to OpenVINO lies"), and torch has no batched
 * product of bfloat16 inputs with float32 output. This kernel does what OpenVINO's does: the
 * two products in bfloat16 (vdpbf16ps, float32 sums), the softmax in float32, the weights
 * rounded to bfloat16 for the second product.
 *
 * One call runs a list of blocks (gpu_pool/model/attention.py's Block: `count` texts of
 * `length` tokens from token `start`, query rows [first, last) of each), one task per text and
 * head, spread over OpenMP threads: the same libgomp that torch loads, so the same threads.
 * Plain C on raw pointers, no torch headers: it builds in a second with any C compiler.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define ROWS 8     /* query rows per score tile */
#define COLS 32    /* keys per score tile: two vectors of 16 */
#define OUT_ROWS 4 /* query rows per output tile */

typedef struct {
    uint16_t *keys;    /* [head_dim / 2][padded][2]: key pairs along head_dim, per key */
    uint16_t *values;  /* [padded / 2][head_dim][2]: value pairs along the keys, per dim */
    float *scores;     /* [ROWS][padded] */
    uint16_t *weights; /* [ROWS][padded]: exp(score - max) in bfloat16 */
    size_t padded;     /* the keys the score rows hold */
    size_t pairs;      /* the entries (keys × head_dim) the keys and values hold */
} Scratch;

static _Thread_local Scratch scratch;

/* Room for `padded` keys of `dim` each; the buffers grow, never shrink (one set per thread). */
static int reserve(Scratch *s, size_t padded, size_t dim) {
    if (padded > s->padded) {
        free(s->scores); free(s->weights);
        s->scores = aligned_alloc(64, ROWS * padded * 4);
        s->weights = aligned_alloc(64, ROWS * padded * 2);
        s->padded = (s->scores && s->weights) ? padded : 0;
        if (!s->padded) return -1;
    }
    if (padded * dim > s->pairs) {
        free(s->keys); free(s->values);
        s->keys = aligned_alloc(64, padded * dim * 2);
        s->values = aligned_alloc(64, padded * dim * 2);
        s->pairs = (s->keys && s->values) ? padded * dim : 0;
        if (!s->pairs) return -1;
    }
    return 0;
}

static inline __m512bh pair(const uint16_t *at) {
    uint32_t bits;
    memcpy(&bits, at, 4);
    return (__m512bh)_mm512_set1_epi32((int)bits);
}

/* Where vpermt2w takes each word of two value rows interleaved, even[i] then odd[i] (odd's words
 * count from 32): the first 16 pairs, then the next 16. */
static const uint16_t interleave_low[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                            8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
static const uint16_t interleave_high[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                             24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

/* Keys and values of one text and head into the pair layouts vdpbf16ps reads, zeros past `length`:
 * a key pair of 16 keys in one gather, two value rows interleaved by two permutes (element by
 * element, the packing took a quarter of a layer's attention of 128-token texts). */
static void pack(Scratch *s, const uint16_t *key, const uint16_t *value, size_t stride, int length,
                 int padded, int dim) {
    uint32_t *keys = (uint32_t *)s->keys;
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)(stride / 2))); /* in 32-bit pairs */
    for (int j = 0; j < padded; j += 16) {
        int left = length - j;
        __mmask16 kept = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
        const uint16_t *first = key + (size_t)j * stride;
        for (int d = 0; d < dim / 2; d++) {
            __m512i pairs = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), kept, rows, first + 2 * d, 4);
            _mm512_storeu_si512(keys + (size_t)d * padded + j, pairs);
        }
    }
    const __m512i low = _mm512_loadu_si512(interleave_low), high = _mm512_loadu_si512(interleave_high);
    for (int j = 0; j < padded; j += 2) {
        uint16_t *out = s->values + (size_t)j * dim;
        const uint16_t *even = value + (size_t)j * stride, *odd = even + stride;
        for (int d = 0; d < dim; d += 32) {
            int whole = dim - d >= 32; /* else 16 words left: dim is a multiple of 16 */
            __mmask32 words = whole ? 0xffffffffu : 0xffffu;
            __m512i e = j < length ? _mm512_maskz_loadu_epi16(words, even + d) : _mm512_setzero_si512();
            __m512i o = j + 1 < length ? _mm512_maskz_loadu_epi16(words, odd + d) : _mm512_setzero_si512();
            _mm512_storeu_si512(out + 2 * d, _mm512_permutex2var_epi16(e, low, o));
            if (whole) _mm512_storeu_si512(out + 2 * d + 32, _mm512_permutex2var_epi16(e, high, o));
        }
    }
}

/* scores[r][j] = q_r . k_j for ROWS query rows (rows past the last repeat it) and every key. */
static void score_tile(Scratch *s, const uint16_t *const *query, int padded, int dim) {
    const uint16_t *keys = s->keys;
    for (int j = 0; j < padded; j += COLS) {
        __m512 acc[ROWS][2];
        for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int d = 0; d < dim / 2; d++) {
            const uint16_t *k = keys + ((size_t)d * padded + j) * 2;
            __m512bh k0 = (__m512bh)_mm512_loadu_si512(k), k1 = (__m512bh)_mm512_loadu_si512(k + 32);
            for (int r = 0; r < ROWS; r++) {
                __m512bh q = pair(query[r] + 2 * d);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], q, k0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], q, k1);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm512_storeu_ps(s->scores + (size_t)r * padded + j, acc[r][0]);
            _mm512_storeu_ps(s->scores + (size_t)r * padded + j + 16, acc[r][1]);
        }
    }
}

/* Each row's softmax numerators exp(scale * (score - max)) into bfloat16 weights; returns 1 / their sum per row. */
static void softmax_tile(Scratch *s, int length, int padded, float scale, float *inverse) {
    __mmask16 tail = (__mmask16)((1u << (length % 16)) - 1u);
    for (int r = 0; r < ROWS; r++) {
        const float *row = s->scores + (size_t)r * padded;
        uint16_t *weights = s->weights + (size_t)r * padded;
        __m512 top = _mm512_set1_ps(-INFINITY);
        int j = 0;
        for (; j + 16 <= length; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(row + j));
        if (tail) top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, row + j));
        __m512 shift = _mm512_set1_ps(-_mm512_reduce_max_ps(top) * scale), factor = _mm512_set1_ps(scale);
        __m512 sum = _mm512_setzero_ps();
        for (j = 0; j < padded; j += 16) {
            __m512 e = exp_ps(_mm512_fmadd_ps(_mm512_loadu_ps(row + j), factor, shift));
            if (j + 16 > length) e = _mm512_maskz_mov_ps(j < length ? tail : 0, e);
            sum = _mm512_add_ps(sum, e);
            _mm256_storeu_si256((__m256i *)(weights + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        inverse[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
}

/* out_r[d, d + 16 * vectors) = (weights_r . values) / sum_r for `rows` rows (at most OUT_ROWS) from
 * weight row `first`. Inlined with `vectors` a constant (4, or 1 for a head_dim's last 16s). */
static inline __attribute__((always_inline)) void output_tile(Scratch *s, int first, int rows, uint16_t *const *out,
                                                              const float *inverse, int padded, int dim, int d,
                                                              const int vectors) {
    __m512 acc[OUT_ROWS][4];
    for (int r = 0; r < OUT_ROWS; r++)
        for (int v = 0; v < vectors; v++) acc[r][v] = _mm512_setzero_ps();
    for (int j = 0; j < padded; j += 2) {
        const uint16_t *values = s->values + (size_t)j * dim + 2 * d;
        __m512bh value[4];
        for (int v = 0; v < vectors; v++) value[v] = (__m512bh)_mm512_loadu_si512(values + 32 * v);
        for (int r = 0; r < OUT_ROWS; r++) {
            __m512bh w = pair(s->weights + (size_t)(first + r) * padded + j);
            for (int v = 0; v < vectors; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], w, value[v]);
        }
    }
    for (int r = 0; r < rows; r++) {
        __m512 scale = _mm512_set1_ps(inverse[first + r]);
        for (int v = 0; v < vectors; v++) {
            __m256bh bf = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][v], scale));
            _mm256_storeu_si256((__m256i *)(out[r] + d + 16 * v), (__m256i)bf);
        }
    }
}

static void output_rows(Scratch *s, int first, int rows, uint16_t *const *out, const float *inverse, int padded,
                        int dim) {
    int d = 0;
    for (; d + 64 <= dim; d += 64) output_tile(s, first, rows, out, inverse, padded, dim, d, 4);
    for (; d < dim; d += 16) output_tile(s, first, rows, out, inverse, padded, dim, d, 1);
}

/* One text and head: query rows [first, last) of a text of `length` tokens. */
static int attend_one(const uint16_t *qkv, uint16_t *context, int start, int length, int first, int last,
                      int head, int heads, int dim, float scale) {
    size_t hidden = (size_t)heads * dim, stride = 3 * hidden;
    int padded = (length + COLS - 1) / COLS * COLS;
    Scratch *s = &scratch;
    if (reserve(s, (size_t)padded, (size_t)dim)) return -1;
    const uint16_t *base = qkv + (size_t)start * stride + (size_t)head * dim;
    pack(s, base + hidden, base + 2 * hidden, stride, length, padded, dim);
    float inverse[ROWS];
    for (int row = first; row < last; row += ROWS) {
        const uint16_t *query[ROWS];
        uint16_t *out[ROWS];
        for (int r = 0; r < ROWS; r++) {
            int at = row + r < last ? row + r : last - 1;
            query[r] = base + (size_t)at * stride;
            out[r] = context + (size_t)(start + at) * hidden + (size_t)head * dim;
        }
        score_tile(s, query, padded, dim);
        softmax_tile(s, length, padded, scale, inverse);
        int rows = last - row < ROWS ? last - row : ROWS;
        for (int r = 0; r < rows; r += OUT_ROWS)
            output_rows(s, r, rows - r < OUT_ROWS ? rows - r : OUT_ROWS, out + r, inverse, padded, dim);
    }
    return 0;
}

/* qkv: bfloat16 [tokens][3][heads][dim]; context: bfloat16 [tokens][heads][dim], the blocks' rows written.
 * blocks: `count` rows of (start, length, texts, first row, last row). dim: a multiple of 16.
 * Returns 0, or -1 when scratch memory could not be had (the rows are then incomplete). */
int attend_blocks(const uint16_t *qkv, uint16_t *context, const int32_t *blocks, int count, int heads, int dim,
                  float scale, int threads) {
    int tasks = 0;
    for (int b = 0; b < count; b++) tasks += blocks[5 * b + 2] * heads;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(| : failed)
    for (int task = 0; task < tasks; task++) {
        int b = 0, rest = task;
        while (rest >= blocks[5 * b + 2] * heads) rest -= blocks[5 * b + 2] * heads, b++;
        const int32_t *block = blocks + 5 * b;
        int text = rest / heads, head = rest % heads, length = block[1];
        failed |= attend_one(qkv, context, block[0] + text * length, length, block[3], block[4], head, heads, dim,
                             scale);
    }
    return failed ? -1 : 0;
}

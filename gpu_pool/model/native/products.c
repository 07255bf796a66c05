/* The encoder's matrix products, x·Wᵀ + b (then exact GELU where asked), in bfloat16 with float32
 * sums, or in int8 with int32 sums, for CPUs with AVX-512 BF16 and VNNI.
 *
 * Why it exists: torch's bfloat16 product on the CPU (oneDNN's, weights prepacked) reaches about
 * 0.8 of this kernel's rate at 16 rows, the rows of a lone query, whose pass is almost all
 * products (docs/performance.md, "The native products"); at a batch's rows it is as fast. Its
 * int8 product (fbgemm's) takes one activation scale per call; this one a scale per row.
 *
 * The weight is packed once at load (gpu_pool/model/native/__init__.py) into blocks of 16 output
 * columns, [out / 16][in / 2][16][2]: one 64-byte load holds a pair of inputs for each of 16
 * columns, what vdpbf16ps multiplies with a broadcast pair of one input row. A tile is up to 6
 * rows by 4 blocks: 24 accumulators of the 32 registers, each weight load serving 6 rows and each
 * broadcast 4 blocks. A task is a panel of 4 blocks over a chunk of rows, so that the panel stays
 * in the core's cache across the chunk; tasks go to OpenMP threads (torch's libgomp, as in
 * attention.c) in order, so that a thread's tasks share their panels.
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>


#define TILE_ROWS 6
#define TILE_BLOCKS 4
#define CHUNK_ROWS 96

typedef struct {
    const uint32_t *x;  /* [rows][in / 2] bfloat16 pairs, or [rows][in / 4] quads of uint8 (int8's) */
    const void *w;      /* [out / 16][in / 2][16][2] bfloat16, or [out / 16][in / 4][16][4] int8 */
    const float *bias;  /* [out] */
    void *out;          /* [rows][out], bfloat16 or float32 */
    int pairs;          /* in / 2, or int8's in / 4: the 32-bit groups of a row */
    int width;          /* out */
    int bf16_out;
    int gelu;
    /* int8 only: x ≈ row_scale · (x_quantized - row_zero), weight ≈ weight_scale · w_quantized */
    const float *row_scale, *weight_scale;
    const int32_t *row_zero, *weight_sums; /* weight_sums: each column's sum of w_quantized */
} Product;

/* Exact GELU, x·Φ(x) = x/2 · (1 + erf(x/√2)), with erf(z) = z·P(z²) / Q(z²) over z in [-4, 4] and
 * ±1 beyond (as in float32): Eigen's rational fit, largest error 4.5e-7 (GELU's under 1e-6 · (1 +
 * |x|)), far below bfloat16's rounding of the result; the reciprocal of Q by its estimate (2^-14) and
 * a Newton step. Two thirds of the operations of erfc's fit with exp that it replaced, and no exp,
 * whose results fall to denormal floats (slow) for large negative inputs. */
static inline __m512 gelu_ps(__m512 x) {
    static const float p[] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                              -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                              -1.60960333262415e-02f};
    static const float q[] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                              -7.37332916720468e-03f, -1.42647390514189e-02f};
    __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678f));
    z = _mm512_max_ps(_mm512_min_ps(z, _mm512_set1_ps(4.0f)), _mm512_set1_ps(-4.0f));
    __m512 u = _mm512_mul_ps(z, z);
    __m512 top = _mm512_set1_ps(p[0]), bottom = _mm512_set1_ps(q[0]);
    for (int i = 1; i < 7; i++) top = _mm512_fmadd_ps(top, u, _mm512_set1_ps(p[i]));
    for (int i = 1; i < 5; i++) bottom = _mm512_fmadd_ps(bottom, u, _mm512_set1_ps(q[i]));
    __m512 inverse = _mm512_rcp14_ps(bottom);
    inverse = _mm512_mul_ps(inverse, _mm512_fnmadd_ps(bottom, inverse, _mm512_set1_ps(2.0f)));
    __m512 erf = _mm512_mul_ps(_mm512_mul_ps(z, top), inverse);
    __m512 half = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(half, erf, half);
}

static inline void store(const Product *p, size_t row, int column, __m512 value) {
    if (p->gelu) value = gelu_ps(value);
    size_t at = row * (size_t)p->width + (size_t)column;
    if (p->bf16_out)
        _mm256_storeu_si256((__m256i *)((uint16_t *)p->out + at), (__m256i)_mm512_cvtneps_pbh(value));
    else
        _mm512_storeu_ps((float *)p->out + at, value);
}

/* Rows [row, row + R) by blocks [block, block + B): R and B are constants in each instance below,
 * so that the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(const Product *p, int row, int block, const int R,
                                                       const int B) {
    __m512 acc[TILE_ROWS][TILE_BLOCKS];
    const size_t stride = (size_t)p->pairs * 32; /* one block of the weight, in bfloat16s */
    const uint16_t *w = (const uint16_t *)p->w + (size_t)block * stride;
    const uint32_t *x = p->x + (size_t)row * p->pairs;
    for (int j = 0; j < B; j++) {
        __m512 bias = _mm512_loadu_ps(p->bias + (block + j) * 16);
        for (int i = 0; i < R; i++) acc[i][j] = bias;
    }
    for (int k = 0; k < p->pairs; k++) {
        __m512bh weights[TILE_BLOCKS];
        for (int j = 0; j < B; j++) weights[j] = (__m512bh)_mm512_loadu_si512(w + j * stride + (size_t)k * 32);
        for (int i = 0; i < R; i++) {
            __m512bh pair = (__m512bh)_mm512_set1_epi32((int)x[(size_t)i * p->pairs + k]);
            for (int j = 0; j < B; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], pair, weights[j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < B; j++) store(p, (size_t)(row + i), (block + j) * 16, acc[i][j]);
}

/* acc + the 4 products of uint8 `quad` by int8 `weights` in each 32-bit lane. GCC 12's intrinsic
 * for it copies every accumulator through the stack in a loop like the tile's (half the rate). */
static inline __m512i dpbusd(__m512i acc, __m512i quad, __m512i weights) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(quad), "v"(weights));
    return acc;
}

/* The same tile in int8 (vpdpbusd: 4 products of uint8 by int8 per 32-bit lane, summed in int32),
 * each sum started at -row_zero · weight_sums so that it ends as Σ w_q · (x_q - row_zero). */
static inline __attribute__((always_inline)) void tile_int8(const Product *p, int row, int block, const int R,
                                                            const int B) {
    __m512i acc[TILE_ROWS][TILE_BLOCKS];
    const size_t stride = (size_t)p->pairs * 64; /* one block of the weight, in bytes */
    const int8_t *w = (const int8_t *)p->w + (size_t)block * stride;
    const uint32_t *x = p->x + (size_t)row * p->pairs;
    for (int j = 0; j < B; j++) {
        __m512i sums = _mm512_loadu_si512(p->weight_sums + (block + j) * 16);
        for (int i = 0; i < R; i++) acc[i][j] = _mm512_mullo_epi32(sums, _mm512_set1_epi32(-p->row_zero[row + i]));
    }
    for (int k = 0; k < p->pairs; k++) {
        __m512i weights[TILE_BLOCKS];
        for (int j = 0; j < B; j++) weights[j] = _mm512_loadu_si512(w + j * stride + (size_t)k * 64);
        for (int i = 0; i < R; i++) {
            __m512i quad = _mm512_set1_epi32((int)x[(size_t)i * p->pairs + k]);
            for (int j = 0; j < B; j++) acc[i][j] = dpbusd(acc[i][j], quad, weights[j]);
        }
    }
    for (int j = 0; j < B; j++) {
        __m512 scale = _mm512_loadu_ps(p->weight_scale + (block + j) * 16);
        __m512 bias = _mm512_loadu_ps(p->bias + (block + j) * 16);
        for (int i = 0; i < R; i++) {
            __m512 scaled = _mm512_mul_ps(scale, _mm512_set1_ps(p->row_scale[row + i]));
            store(p, (size_t)(row + i), (block + j) * 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), scaled, bias));
        }
    }
}

typedef void (*Tile)(const Product *, int, int);
#define TILE(R, B) \
    static void tile_##R##_##B(const Product *p, int row, int block) { tile(p, row, block, R, B); } \
    static void tile_int8_##R##_##B(const Product *p, int row, int block) { tile_int8(p, row, block, R, B); }
#define TILES(R) TILE(R, 1) TILE(R, 2) TILE(R, 3) TILE(R, 4)
TILES(1) TILES(2) TILES(3) TILES(4) TILES(5) TILES(6)
#define ROW_OF(KIND, R) {KIND##R##_1, KIND##R##_2, KIND##R##_3, KIND##R##_4}
#define ALL_TILES(KIND) {ROW_OF(KIND, 1), ROW_OF(KIND, 2), ROW_OF(KIND, 3), ROW_OF(KIND, 4), ROW_OF(KIND, 5), \
                         ROW_OF(KIND, 6)}
static const Tile tiles[TILE_ROWS][TILE_BLOCKS] = ALL_TILES(tile_);
static const Tile tiles_int8[TILE_ROWS][TILE_BLOCKS] = ALL_TILES(tile_int8_);

static inline int least(int a, int b) { return a < b ? a : b; }

static void run(const Product *p, const Tile table[TILE_ROWS][TILE_BLOCKS], int rows, int threads) {
    const int blocks = p->width / 16, panels = (blocks + TILE_BLOCKS - 1) / TILE_BLOCKS;
    const int chunks = (rows + CHUNK_ROWS - 1) / CHUNK_ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int task = 0; task < panels * chunks; task++) {
        const int block = task / chunks * TILE_BLOCKS, first = task % chunks * CHUNK_ROWS;
        const int width = least(blocks - block, TILE_BLOCKS), end = least(first + CHUNK_ROWS, rows);
        for (int row = first; row < end; row += TILE_ROWS) table[least(end - row, TILE_ROWS) - 1][width - 1](p, row, block);
    }
}

/* x: bfloat16 [rows][in]; weight: packed as above; bias: float32 [out]; out: [rows][out], bfloat16
 * when bf16_out, else float32; gelu: exact GELU after the bias. in: even; out: a multiple of 16.
 * Returns 0, or -1 for sizes it does not take (nothing written). */
int product(const uint16_t *x, int rows, int in, const uint16_t *weight, int out, const float *bias, void *result,
            int bf16_out, int gelu, int threads) {
    if (in <= 0 || in % 2 || out <= 0 || out % 16 || rows < 0) return -1;
    const Product p = {(const uint32_t *)x, weight, bias, result, in / 2, out, bf16_out, gelu, 0, 0, 0, 0};
    run(&p, tiles, rows, threads);
    return 0;
}

/* Each row of x (float32 [rows][in]) to uint8 over its own range, zero included:
 * x ≈ scale · (quantized - zero), zero in [0, 255]. */
static void quantize_rows(const float *x, int rows, int in, uint8_t *quantized, float *scale, int32_t *zero,
                          int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * in;
        __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
        for (int k = 0; k < in; k += 16) {
            __m512 v = _mm512_loadu_ps(row + k);
            low = _mm512_min_ps(low, v), high = _mm512_max_ps(high, v);
        }
        float lo = _mm512_reduce_min_ps(low), step = (_mm512_reduce_max_ps(high) - lo) / 255.0f;
        if (step == 0.0f) step = 1.0f; /* a row of zeros */
        int z = (int)nearbyintf(-lo / step);
        scale[r] = step, zero[r] = z;
        __m512 inverse = _mm512_set1_ps(1.0f / step), offset = _mm512_set1_ps((float)z);
        for (int k = 0; k < in; k += 16) {
            __m512 q = _mm512_fmadd_ps(_mm512_loadu_ps(row + k), inverse, offset);
            __m512i n = _mm512_cvtps_epi32(_mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            n = _mm512_min_epi32(_mm512_max_epi32(n, _mm512_setzero_si512()), _mm512_set1_epi32(255));
            _mm_storeu_si128((__m128i *)(quantized + (size_t)r * in + k), _mm512_cvtepi32_epi8(n));
        }
    }
}

/* int8: x float32 [rows][in], quantized per row into `quantized` [rows][in], `scale` and `zero`
 * [rows] (the caller's scratch); weight int8 packed [out / 16][in / 4][16][4] with its per-column
 * `weight_scale` and `weight_sums`. in: a multiple of 16; out: of 16. Returns 0, or -1 as above. */
int product_int8(const float *x, int rows, int in, const int8_t *weight, int out, const float *weight_scale,
                 const int32_t *weight_sums, const float *bias, void *result, int bf16_out, int gelu,
                 uint8_t *quantized, float *scale, int32_t *zero, int threads) {
    if (in <= 0 || in % 16 || out <= 0 || out % 16 || rows < 0) return -1;
    quantize_rows(x, rows, in, quantized, scale, zero, threads);
    const Product p = {(const uint32_t *)quantized, weight, bias, result, in / 4, out, bf16_out, gelu,
                       scale, weight_scale, zero, weight_sums};
    run(&p, tiles_int8, rows, threads);
    return 0;
}

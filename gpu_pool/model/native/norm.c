/* A layer's residual sum and LayerNorm in one pass over each row, for the CPU engine's bfloat16 and
 * int8 paths: out = LayerNorm(x + residual) · weight + bias, x a product's output (bfloat16 or
 * float32), the rest float32.
 *
 * Why it exists: torch runs the sum and the norm as two operators, each a pass over the rows and a
 * dispatch, and they took 2 % of a 1,024-token pass's time (docs/performance.md); a row of
 * bge-m3's is 4 KB, in the core's cache from the sum to the norm's last pass here.
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

static inline __m512 widened(const void *x, int bf16, size_t at) {
    if (!bf16) return _mm512_loadu_ps((const float *)x + at);
    __m512i narrow = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + at)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(narrow, 16));
}

/* x: [rows][width], bfloat16 when x_bf16, else float32; residual, out: float32 [rows][width] (out
 * may be residual); weight, bias: float32 [width]. The mean first, then the variance about it (as
 * torch's, not E[x²] - mean², which loses digits). width: a multiple of 16; returns 0, or -1. */
int add_norm(const void *x, int x_bf16, const float *residual, const float *weight, const float *bias, float eps,
             float *out, int rows, int width, int threads) {
    if (width <= 0 || width % 16 || rows < 0) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int r = 0; r < rows; r++) {
        const size_t row = (size_t)r * width;
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < width; k += 16) {
            __m512 v = _mm512_add_ps(widened(x, x_bf16, row + k), _mm512_loadu_ps(residual + row + k));
            _mm512_storeu_ps(out + row + k, v);
            sum = _mm512_add_ps(sum, v);
        }
        __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)width);
        __m512 squares = _mm512_setzero_ps();
        for (int k = 0; k < width; k += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(out + row + k), mean);
            squares = _mm512_fmadd_ps(d, d, squares);
        }
        __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / (float)width + eps));
        for (int k = 0; k < width; k += 16) {
            __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(out + row + k), mean), scale);
            _mm512_storeu_ps(out + row + k, _mm512_fmadd_ps(d, _mm512_loadu_ps(weight + k), _mm512_loadu_ps(bias + k)));
        }
    }
    return 0;
}

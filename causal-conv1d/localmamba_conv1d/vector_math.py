"""C prelude shared by the CPU kernels: 8-wide float vectors (GCC/Clang vector extensions) and vector math.

Without -ffast-math these compile to SIMD code on any target (AVX2/FMA on x86-64 when enabled, NEON pairs on
ARM, SSE pairs otherwise); exp, log1p, softplus and sigmoid are explicit polynomials (relative error below 1e-6).
"""

PRELUDE = r"""
#include <stdlib.h>
#include <string.h>

typedef float vf __attribute__((vector_size(32)));
typedef int vi __attribute__((vector_size(32)));
typedef float vf_u __attribute__((vector_size(32), aligned(4)));
#define VW 8
#define INLINE static inline __attribute__((always_inline))

INLINE vf splat(float x) { return (vf){x, x, x, x, x, x, x, x}; }
INLINE vf load(const float *p) { return *(const vf_u *)p; }
INLINE void store(float *p, vf v) { *(vf_u *)p = v; }
INLINE vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
INLINE float hsum(vf v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

#if defined(__AVX__)
#include <immintrin.h>
INLINE vf max_v(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
INLINE vf min_v(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
INLINE vf max_v(vf a, vf b) { return pick(a > b, a, b); }
INLINE vf min_v(vf a, vf b) { return pick(a < b, a, b); }
#endif

/* e^x: x = k ln2 + r, |r| <= ln2/2 (ln2 split in two parts), e^r by its degree-7 Taylor polynomial, 2^k built in
   the exponent bits. x is clamped to [-88, 88]; below about -87.7, k = -127 makes the exponent bits (and the
   result) exactly 0, so no denormals are produced. */
INLINE vf exp_v(vf x) {
    const vf magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to the nearest integer */
    x = min_v(max_v(x, splat(-88.0f)), splat(88.0f));
    vf t = x * splat(1.44269504088896341f) + magic;
    vf k = t - magic;
    vi ki = (vi)t - (vi)magic;
    vf r = x - k * splat(0.693359375f);
    r = r - k * splat(-2.12194440e-4f);
    vf p = splat(1.0f / 5040.0f);
    p = p * r + splat(1.0f / 720.0f);
    p = p * r + splat(1.0f / 120.0f);
    p = p * r + splat(1.0f / 24.0f);
    p = p * r + splat(1.0f / 6.0f);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    return p * (vf)((ki + 127) << 23);
}

/* log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) <= 1/3: odd series up to s^13. */
INLINE vf log1p_unit_v(vf e) {
    vf s = e / (splat(2.0f) + e);
    vf s2 = s * s;
    vf p = splat(1.0f / 13.0f);
    p = p * s2 + splat(1.0f / 11.0f);
    p = p * s2 + splat(1.0f / 9.0f);
    p = p * s2 + splat(1.0f / 7.0f);
    p = p * s2 + splat(1.0f / 5.0f);
    p = p * s2 + splat(1.0f / 3.0f);
    p = p * s2 + splat(1.0f);
    return splat(2.0f) * s * p;
}

INLINE vf softplus_v(vf x) {
    vf ax = (vf)((vi)x & (vi){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                              0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff});
    vf pos = max_v(x, splat(0.0f));
    return pos + log1p_unit_v(exp_v(-ax));
}

INLINE vf sigmoid_v(vf x) { return splat(1.0f) / (splat(1.0f) + exp_v(-x)); }

/* The first n (< VW allowed) floats at p as a vector, zero filled; and the reverse. */
INLINE vf load_part(const float *p, long n) {
    float buf[VW] = {0};
    memcpy(buf, p, n * sizeof(float));
    return load(buf);
}
INLINE void store_part(float *p, vf v, long n) {
    float buf[VW];
    store(buf, v);
    memcpy(p, buf, n * sizeof(float));
}
"""

/* Vector math shared by the CPU kernels: float vectors of VW lanes (GCC/Clang vector extensions) and explicit
   polynomials.

   VW is 16 when the file is compiled for AVX-512 (-mavx512f), else 8. Without -ffast-math these compile to SIMD code
   on any target (AVX-512 or AVX2/FMA on x86-64 when enabled, NEON pairs on ARM, SSE pairs otherwise); exp, log1p,
   softplus and sigmoid are explicit polynomials (relative error below 1e-6). A few helpers have AVX/AVX2/AVX-512
   fast paths (table-based exp2_8, horizontal sums) with generic fallbacks. Everything is static inline: each kernel
   file includes this header and gets its own copy. Kernels size their buffers and loops by VW and align vector
   buffers to VBYTES. */
#ifndef LOCALMAMBA_VECTOR_MATH_H
#define LOCALMAMBA_VECTOR_MATH_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
#define VBYTES (VW * 4)
typedef float vf __attribute__((vector_size(VBYTES)));
typedef int vi __attribute__((vector_size(VBYTES)));
typedef float vf_u __attribute__((vector_size(VBYTES), aligned(4)));
#define INLINE static inline __attribute__((always_inline))

INLINE vf splat(float x) { return x - (vf){0}; } /* exact, -0.0 included */
INLINE vi splat_i(int x) { return x + (vi){0}; }
INLINE vf load(const float *p) { return *(const vf_u *)p; }
INLINE void store(float *p, vf v) { *(vf_u *)p = v; }
INLINE vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

#if defined(__AVX__)
#include <immintrin.h>
#endif
/* max_v / min_v keep a NaN of their first operand (the data; the second is a bound), so that the clamps below pass
   a NaN input on to the result, as torch does. The x86 instructions return their second operand when either is
   NaN, hence the swapped operands; the generic versions pick the same way. */
#if defined(__AVX512F__)
INLINE vf max_v(vf a, vf b) { return (vf)_mm512_max_ps((__m512)b, (__m512)a); }
INLINE vf min_v(vf a, vf b) { return (vf)_mm512_min_ps((__m512)b, (__m512)a); }
INLINE float hsum(vf v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256((__m512)v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    return ((q[0] + q[2]) + (q[1] + q[3]));
}
#elif defined(__AVX__)
INLINE vf max_v(vf a, vf b) { return (vf)_mm256_max_ps((__m256)b, (__m256)a); }
INLINE vf min_v(vf a, vf b) { return (vf)_mm256_min_ps((__m256)b, (__m256)a); }
INLINE float hsum(vf v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
#else
INLINE vf max_v(vf a, vf b) { return pick(b > a, b, a); }
INLINE vf min_v(vf a, vf b) { return pick(b < a, b, a); }
INLINE float hsum(vf v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
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
    vf ax = (vf)((vi)x & splat_i(0x7fffffff));
    vf pos = max_v(x, splat(0.0f));
    return pos + log1p_unit_v(exp_v(-ax));
}

INLINE vf sigmoid_v(vf x) { return splat(1.0f) / (splat(1.0f) + exp_v(-x)); }

/* 2^(y/8): k = round(y), f = y - k in [-1/2, 1/2]; 2^(f/8) by a cubic (the degree-4 Taylor polynomial with its
   quartic term economised: error 2e-8); 2^(k/8) as 2^(k>>3) * 2^((k&7)/8), the second factor from an 8-entry
   table held in one register (twice over in a 16-lane register: a 16-lane permute reads index k mod 16, whose
   entry is that of k mod 8). y is clamped to [-1008, 1016] (results from 2^-126 to 2^127); relative error about
   1.5e-7. Callers pre-scale exponents by 8 log2(e) to get e^x. Without AVX2 it falls back to exp_v. */
#define EXP2_8_TABLE 1.0f, 1.0905077326652577f, 1.189207115002721f, 1.2968395546510096f, \
                     1.4142135623730951f, 1.5422108254079407f, 1.681792830507429f, 1.8340080864093424f
#if defined(__AVX512F__)
INLINE vf exp2_8_table(vi k) {
    const vf table = {EXP2_8_TABLE, EXP2_8_TABLE};
    return (vf)_mm512_permutexvar_ps((__m512i)k, (__m512)table);
}
#elif defined(__AVX2__)
INLINE vf exp2_8_table(vi k) {
    const vf table = {EXP2_8_TABLE};
    return (vf)_mm256_permutevar8x32_ps((__m256)table, (__m256i)k);
}
#endif
#if defined(__AVX2__)
INLINE vf exp2_8_poly(vf f) {
    vf p = splat(1.0840646223597963e-04f);
    p = p * f + splat(3.754126215248865e-03f);
    p = p * f + splat(8.664339756999316e-02f);
    return p * f + splat(0.9999999816548746f);
}
INLINE vf exp2_8(vf y) {
    const vf magic = splat(12582912.0f);
    y = min_v(max_v(y, splat(-1008.0f)), splat(1016.0f));
    vf t = y + magic;
    vf k = t - magic;
    vi ki = (vi)t - (vi)magic;
    vf scale = (vf)((vi)exp2_8_table(ki) + ((ki >> 3) << 23));
    return exp2_8_poly(y - k) * scale;
}
/* exp2_8 for y <= 0 (decays: dt >= 0 times A < 0), which needs only the lower clamp. */
INLINE vf exp2_8_nonpos(vf y) {
    const vf magic = splat(12582912.0f);
    y = max_v(y, splat(-1008.0f));
    vf t = y + magic;
    vf f = y - (t - magic);
    /* the bits of t are those of magic plus k, and magic's low 25 bits are 0: t's low 4 bits are k mod 16, and
       ((vi)t >> 3) << 23 equals (k >> 3) << 23 */
    vf scale = (vf)((vi)exp2_8_table((vi)t) + (((vi)t >> 3) << 23));
    return exp2_8_poly(f) * scale;
}
#else
INLINE vf exp2_8(vf y) { return exp_v(y * splat(0.08664339756999316f)); }
INLINE vf exp2_8_nonpos(vf y) { return exp2_8(y); }
#endif
#define EXP2_8_SCALE 11.541560327111707f /* 8 log2(e): exp(x) = exp2_8(x * EXP2_8_SCALE) */

/* out[t] = sum of the VW lanes of rows[t] (rows: n x VW floats), for t < n. */
static inline void hsum_rows(const float *rows, long n, float *out) {
    long t = 0;
#if defined(__AVX__)
    for (; t + 8 <= n; t += 8) {
        const float *r = rows + t * VW;
        __m256 s[8];
        for (int i = 0; i < 8; i++) {
#if VW == 16
            s[i] = _mm256_add_ps(_mm256_loadu_ps(r + i * VW), _mm256_loadu_ps(r + i * VW + 8));
#else
            s[i] = _mm256_loadu_ps(r + i * VW);
#endif
        }
        __m256 s01 = _mm256_hadd_ps(s[0], s[1]), s23 = _mm256_hadd_ps(s[2], s[3]);
        __m256 s45 = _mm256_hadd_ps(s[4], s[5]), s67 = _mm256_hadd_ps(s[6], s[7]);
        __m256 s03 = _mm256_hadd_ps(s01, s23), s47 = _mm256_hadd_ps(s45, s67);
        _mm256_storeu_ps(out + t, _mm256_add_ps(_mm256_permute2f128_ps(s03, s47, 0x20),
                                                _mm256_permute2f128_ps(s03, s47, 0x31)));
    }
#endif
    for (; t < n; t++) out[t] = hsum(load(rows + t * VW));
}

/* aligned_alloc for n vectors (at least one). */
INLINE vf *alloc_vf(long n) { return (vf *)aligned_alloc(VBYTES, (n > 0 ? n : 1) * sizeof(vf)); }

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

/* Vectors of the first nc (<= VW) channels: whole-vector loads and stores when nc == VW, else zero filled. */
INLINE long min_l(long a, long b) { return a < b ? a : b; }
INLINE vf ldc(const float *p, long nc) { return nc == VW ? load(p) : load_part(p, nc); }
INLINE void stc(float *p, vf v, long nc) { if (nc == VW) store(p, v); else store_part(p, v, nc); }
INLINE void addc(float *p, vf v, long nc) { stc(p, ldc(p, nc) + v, nc); }
INLINE vf keep_lanes(vf v, long nc) { return nc == VW ? v : load_part((const float *)&v, nc); } /* zero lanes >= nc */

#endif

/* The cpu backend's causal depthwise conv1d: conv + bias + SiLU fused, forward and backward, one (batch, channel)
   row at a time. Layout: fp32 contiguous x, out, dout, dx (batch, dim, seqlen); weight (dim, width); bias (dim).
   Called through ctypes by cpu_conv1d.py; one call processes rows [start, end). */
#include "kernel_args.h"
#include "vector_math.h"

/* bias may be NULL; dweight (dim, width) and dbias (dim) are this task's accumulators */
#define CONV1D_ARGS(FIELD, S)                                                                                      \
    FIELD(S, int64_t, batch) FIELD(S, int64_t, dim) FIELD(S, int64_t, seqlen) FIELD(S, int64_t, width)            \
    FIELD(S, int64_t, silu)                                                                                        \
    FIELD(S, const float *, x) FIELD(S, const float *, weight) FIELD(S, const float *, bias) FIELD(S, float *, out) \
    FIELD(S, const float *, dout) FIELD(S, float *, dx) FIELD(S, float *, dweight) FIELD(S, float *, dbias)
DECLARE_KERNEL_ARGS(Conv1dArgs, CONV1D_ARGS)

/* a[t] = bias + sum_k w[k] x[t - (W-1) + k], zero history on the left. */
static void preact_row(const float *restrict x, const float *restrict w, float bias, long L, long W,
                       float *restrict a) {
    for (long t = 0; t < L; t++) a[t] = bias;
    for (long k = 0; k < W; k++) {
        long shift = W - 1 - k;
        float wk = w[k];
        for (long t = shift; t < L; t++) a[t] += wk * x[t - shift];
    }
}

INLINE float dot(const float *a, const float *b, long n) {
    vf acc = splat(0.0f);
    long t = 0;
    for (; t + VW <= n; t += VW) acc += load(a + t) * load(b + t);
    return hsum(acc + load_part(a + t, n - t) * load_part(b + t, n - t));
}

int causal_conv1d_fwd(const Conv1dArgs *c, int64_t start, int64_t end) {
    long L = c->seqlen, W = c->width;
    for (long r = start; r < end; r++) {
        long d = r % c->dim;
        float *o = c->out + r * L;
        preact_row(c->x + r * L, c->weight + d * W, c->bias ? c->bias[d] : 0.0f, L, W, o);
        if (c->silu)
            for (long t = 0; t < L; t += VW) {
                long n = L - t < VW ? L - t : VW;
                vf a = load_part(o + t, n);
                store_part(o + t, a * sigmoid_v(a), n);
            }
    }
    return LM_OK;
}

int causal_conv1d_bwd(const Conv1dArgs *c, int64_t start, int64_t end) {
    long L = c->seqlen, W = c->width;
    float *g = (float *)malloc(L * sizeof(float));
    if (!g) return LM_OUT_OF_MEMORY;
    for (long r = start; r < end; r++) {
        long d = r % c->dim;
        const float *x = c->x + r * L, *w = c->weight + d * W, *dout = c->dout + r * L;
        float *dx = c->dx + r * L;
        preact_row(x, w, c->bias ? c->bias[d] : 0.0f, L, W, g);
        for (long t = 0; t < L; t += VW) {
            long n = L - t < VW ? L - t : VW;
            vf go = load_part(dout + t, n);
            if (c->silu) {
                vf a = load_part(g + t, n), s = sigmoid_v(a);
                go = go * s * (splat(1.0f) + a * (splat(1.0f) - s));
            }
            store_part(g + t, go, n);
        }
        memset(dx, 0, L * sizeof(float));
        float gsum = 0.0f;
        for (long k = 0; k < W; k++) {
            long shift = W - 1 - k;
            float wk = w[k];
            for (long s = 0; s + shift < L; s++) dx[s] += wk * g[s + shift];
            if (shift < L) c->dweight[d * W + k] += dot(g + shift, x, L - shift);
        }
        for (long t = 0; t < L; t++) gsum += g[t];
        c->dbias[d] += gsum;
    }
    free(g);
    return LM_OK;
}

/* The cpu backend of attention_merge_fn: the LocalMamba channel attention over the directions' outputs y (Bt, K, T, E),
   token-major. Per (batch, direction) the token mean of the LayerNorm-ed rows (the small gate MLP runs in PyTorch),
   per token row the gated sum over directions, and the fused backward of both. */
#include <math.h>

#include "kernel_args.h"
#include "vector_math.h"

/* eps of the LayerNorm; mu, rstd (Bt, K, T) each row's statistics; xbar (Bt, K, E) the normalised token means;
   gate, dgate (Bt, K, E); dm (Bt, T, E) the gradient of the merged output; out (Bt, T, E). */
#define ATTENTION_MERGE_ARGS(FIELD, S)                                                                             \
    FIELD(S, int64_t, batch) FIELD(S, int64_t, ndir) FIELD(S, int64_t, ntok) FIELD(S, int64_t, dim)                \
    FIELD(S, float, eps) FIELD(S, const float *, y) FIELD(S, const float *, gate) FIELD(S, const float *, dm)      \
    FIELD(S, const float *, dxbar) FIELD(S, const float *, mu) FIELD(S, const float *, rstd) FIELD(S, float *, out) \
    FIELD(S, float *, xbar) FIELD(S, float *, mu_out) FIELD(S, float *, rstd_out) FIELD(S, float *, dy)            \
    FIELD(S, float *, dgate)
DECLARE_KERNEL_ARGS(AttentionMergeArgs, ATTENTION_MERGE_ARGS)

INLINE float row_mean(const float *r, long E) {
    vf acc = splat(0.0f);
    for (long c0 = 0; c0 < E; c0 += VW) acc += ldc(r + c0, min_l(VW, E - c0));
    return hsum(acc) / (float)E;
}

/* Per (batch, direction): xbar = mean over tokens of (y - mu_t) * rstd_t, and each row's mu_t, rstd_t. */
int attention_stats(const AttentionMergeArgs *a, int64_t start, int64_t end) {
    long T = a->ntok, E = a->dim;
    for (long q = start; q < end; q++) {
        const float *y = a->y + q * T * E;
        float *xb = a->xbar + q * E;
        memset(xb, 0, E * sizeof(float));
        for (long t = 0; t < T; t++) {
            const float *r = y + t * E;
            float mu = row_mean(r, E);
            vf acc = splat(0.0f);
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                vf d = keep_lanes(ldc(r + c0, nc) - splat(mu), nc);
                acc += d * d;
            }
            float rstd = 1.0f / sqrtf(hsum(acc) / (float)E + a->eps);
            a->mu_out[q * T + t] = mu;
            a->rstd_out[q * T + t] = rstd;
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                addc(xb + c0, (ldc(r + c0, nc) - splat(mu)) * splat(rstd), nc);
            }
        }
        if (T > 0) /* no tokens: a zero summary, whose gate then scales nothing (the weights' gradients are 0) */
            for (long c = 0; c < E; c++) xb[c] /= (float)T;
    }
    return LM_OK;
}

/* out[b, t] = sum_k y[b, k, t] * gate[b, k]; items are (batch, token) rows. */
int attention_weighted_sum(const AttentionMergeArgs *a, int64_t start, int64_t end) {
    long T = a->ntok, E = a->dim, K = a->ndir;
    for (long q = start; q < end; q++) {
        long b = q / T, t = q % T;
        float *o = a->out + q * E;
        for (long c0 = 0; c0 < E; c0 += VW) {
            long nc = min_l(VW, E - c0);
            vf acc = splat(0.0f);
            for (long k = 0; k < K; k++)
                acc += ldc(a->y + ((b * K + k) * T + t) * E + c0, nc) * ldc(a->gate + (b * K + k) * E + c0, nc);
            stc(o + c0, acc, nc);
        }
    }
    return LM_OK;
}

/* dgate[b, k] = sum_t dm[b, t] * y[b, k, t], per (batch, direction). */
int attention_gate_grad(const AttentionMergeArgs *a, int64_t start, int64_t end) {
    long T = a->ntok, E = a->dim;
    for (long q = start; q < end; q++) {
        long b = q / a->ndir;
        float *dg = a->dgate + q * E;
        memset(dg, 0, E * sizeof(float));
        for (long t = 0; t < T; t++)
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                addc(dg + c0, ldc(a->dm + (b * T + t) * E + c0, nc) * ldc(a->y + (q * T + t) * E + c0, nc), nc);
            }
    }
    return LM_OK;
}

/* dy = dm * gate + the LayerNorm-mean backward of dxbar (the gradient of xbar), per (batch, direction):
   dy_t = rstd_t / T * (dxbar - mean(dxbar) - xhat_t * mean(dxbar * xhat_t)). */
int attention_input_grad(const AttentionMergeArgs *a, int64_t start, int64_t end) {
    long T = a->ntok, E = a->dim;
    for (long q = start; q < end; q++) {
        long b = q / a->ndir;
        const float *dxb = a->dxbar + q * E, *g = a->gate + q * E;
        float m0 = row_mean(dxb, E);
        for (long t = 0; t < T; t++) {
            const float *r = a->y + (q * T + t) * E, *dm = a->dm + (b * T + t) * E;
            float *d = a->dy + (q * T + t) * E;
            vf mu = splat(a->mu[q * T + t]), rs = splat(a->rstd[q * T + t]);
            vf acc = splat(0.0f);
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                acc += ldc(dxb + c0, nc) * (ldc(r + c0, nc) - mu) * rs;
            }
            float m1 = hsum(acc) / (float)E;
            vf scale = rs * splat(1.0f / (float)T);
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                vf xhat = (ldc(r + c0, nc) - mu) * rs;
                vf v = ldc(dm + c0, nc) * ldc(g + c0, nc)
                       + scale * (ldc(dxb + c0, nc) - splat(m0) - xhat * splat(m1));
                stc(d + c0, v, nc);
            }
        }
    }
    return LM_OK;
}

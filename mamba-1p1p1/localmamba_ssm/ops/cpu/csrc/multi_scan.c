/* The cpu backend of multi_scan_inner_fn: selective scan of K reorderings of one set of token rows, reading its
   inputs through the index table and writing gated outputs in token order.

   Layout contract (fp32, contiguous; vectorised over VW channels):

   - index (K, L) int64: sequence position s of direction k reads token row index[k, s]; the value T marks a
     zero (padding). Every direction lists every token row exactly once (the first direction's backward writes the
     token gradient, the others add to it).
   - src (Bt, T, src_stride): token rows; x is channels [0, E), the gate z channels [E, 2E).
   - Two modes. With a conv (conv_w given), multi_scan_gather_fwd writes the sequences after the causal depthwise
     conv (weights (K, W, E)) and SiLU to u (K, Bt, L, E), and xdbl (K, Bt, L, R + 2N) holds their projections
     [dt low rank | B | C] in sequence order. Without a conv (token_major = 1) the scan reads u straight from the x
     channels of src, and xdbl is (Bt, T, K, R + 2N): the projections of the token rows (x_proj commutes with the
     reordering), so there is no per-direction copy of anything; padding positions read zeros.
   - dt_w (K, R, P), A (K, N, P) (negative: -exp(A_log)) and A2 = A * EXP2_8_SCALE (K, N, P), channels
     zero-padded to pdim = P (a multiple of VW, so every parameter load is a whole vector); dt_b (K, E),
     D (K, E). dt = softplus(dt_w x_dbl[:R] + dt_b) is computed in the scan, R multiply-adds per step and channel
     vector (cheaper than a (K, Bt, L, E) buffer filled by a thin batched matmul, which at LocalVMamba-T's first
     stage cost more than the scan).
   - y (Bt, K, T, E): direction k's output at each token row, times SiLU(z) when gate, written by the scan.

   The scan works on chunks of TC steps: for each chunk, every block of VW channels computes its dt, then runs the
   recurrence on groups of states held in registers, computing each decay exp(dt A) right where it is used
   (forward); a block's state is kept in a small buffer between chunks. The forward stores the state at every chunk
   start when a backward is to follow (else the backward recomputes them in a forward sweep); the backward goes
   through the chunks in reverse: it recomputes a chunk's decays and states from its checkpoint and runs the
   reverse-time recurrence, with the reductions over channels (dB, dC and the dt low-rank gradient) accumulated as
   vectors and summed once per chunk. Its input gradient goes to du (K, Bt, L, E) with a conv (then
   multi_scan_gather_bwd runs the conv's backward and adds every direction into dsrc), else straight into the x
   channels of dsrc; dxdbl has xdbl's layout. */
#include "kernel_args.h"
#include "vector_math.h"

#define TC 16
#ifndef NG
#define NG 8 /* states per register group in the forward recurrence */
#endif

/* Sizes and the mode, then the buffers described above; d* are gradients (dconv_w, dconv_b, ddt_w, ddt_b, dA, dD:
   this task's accumulators); ckpt: the state at every chunk start, written by the forward scan when given (for a
   backward to come) and read by the backward when given (else it recomputes them), multi_scan_checkpoint_floats()
   floats per (direction, batch) pair; pointers a call does not use may be NULL. */
#define MULTI_SCAN_ARGS(FIELD, S)                                                                                  \
    FIELD(S, int64_t, batch) FIELD(S, int64_t, ndir) FIELD(S, int64_t, seqlen) FIELD(S, int64_t, ntok)             \
    FIELD(S, int64_t, dim) FIELD(S, int64_t, nstate) FIELD(S, int64_t, rank) FIELD(S, int64_t, width)              \
    FIELD(S, int64_t, silu) FIELD(S, int64_t, gate) FIELD(S, int64_t, src_stride) FIELD(S, int64_t, pdim)          \
    FIELD(S, int64_t, token_major) FIELD(S, const int64_t *, index) FIELD(S, const float *, src)                   \
    FIELD(S, const float *, conv_w) FIELD(S, const float *, conv_b) FIELD(S, float *, u)                           \
    FIELD(S, const float *, xdbl) FIELD(S, const float *, dt_w) FIELD(S, const float *, dt_b)                      \
    FIELD(S, const float *, A) FIELD(S, const float *, A2) FIELD(S, const float *, D) FIELD(S, float *, y)         \
    FIELD(S, const float *, dy) FIELD(S, float *, du) FIELD(S, float *, dxdbl) FIELD(S, float *, dsrc)             \
    FIELD(S, float *, dconv_w) FIELD(S, float *, dconv_b) FIELD(S, float *, ddt_w) FIELD(S, float *, ddt_b)        \
    FIELD(S, float *, dA) FIELD(S, float *, dD) FIELD(S, float *, ckpt)
DECLARE_KERNEL_ARGS(MultiScanArgs, MULTI_SCAN_ARGS)


/* Number of positions up to the last real token (trailing padding never reaches a real output). */
static long real_length(const int64_t *idx, long L, long T) {
    while (L > 0 && idx[L - 1] >= T) L--;
    return L;
}

INLINE void prefetch_row(const float *r, long n) {
    for (long c = 0; c < n; c += 16) __builtin_prefetch(r + c);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Gather + causal depthwise conv + SiLU (the conv mode): u[k, b, s] = SiLU(conv_b + sum_j w[j] x[s - (W-1) + j]). */

INLINE const float *x_row(const MultiScanArgs *a, const int64_t *idx, long b, long s, const float *zeros) {
    if (s < 0 || idx[s] >= a->ntok) return zeros;
    return a->src + (b * a->ntok + idx[s]) * a->src_stride;
}

/* Pre-activation of channels [c0, c0 + nc) at position s. */
INLINE vf conv_pre(const MultiScanArgs *a, long k, const int64_t *idx, long b, long s, long c0, long nc, const float *zeros) {
    long W = a->width, E = a->dim;
    vf acc = a->conv_b ? ldc(a->conv_b + k * E + c0, nc) : splat(0.0f);
    for (long j = 0; j < W; j++)
        acc += ldc(a->conv_w + (k * W + j) * E + c0, nc) * ldc(x_row(a, idx, b, s - (W - 1) + j, zeros) + c0, nc);
    return acc;
}

/* Tasks are (batch, direction) pairs in batch-major order, so the directions of one batch reuse its token rows
   while they are cached; each step prefetches the token row that enters the window PF steps later. */
#define PF 2
int multi_scan_gather_fwd(const MultiScanArgs *a, int64_t start, int64_t end) {
    long L = a->seqlen, E = a->dim, W = a->width, K = a->ndir;
    float *zeros = (float *)calloc(E + VW, sizeof(float));
    const float **rows = (const float **)malloc(W * sizeof(float *));
    if (!zeros || !rows) { free(zeros); free(rows); return LM_OUT_OF_MEMORY; }
    for (long item = start; item < end; item++) {
        long b = item / K, k = item % K, p = k * a->batch + b;
        const int64_t *idx = a->index + k * L;
        long len = real_length(idx, L, a->ntok);
        float *u = a->u + p * L * E;
        const float *cw = a->conv_w + k * W * E, *cb = a->conv_b ? a->conv_b + k * E : NULL;
        for (long s = 0; s < PF && s < len; s++) prefetch_row(x_row(a, idx, b, s, zeros), E);
        for (long s = 0; s < len; s++) {
            if (s + PF < len) prefetch_row(x_row(a, idx, b, s + PF, zeros), E);
            float *us = u + s * E;
            for (long j = 0; j < W; j++) rows[j] = x_row(a, idx, b, s - (W - 1) + j, zeros);
            for (long c0 = 0; c0 < E; c0 += VW) {
                long nc = min_l(VW, E - c0);
                vf v = cb ? ldc(cb + c0, nc) : splat(0.0f);
                if (W == 4)
                    v += ldc(cw + c0, nc) * ldc(rows[0] + c0, nc) + ldc(cw + E + c0, nc) * ldc(rows[1] + c0, nc)
                         + ldc(cw + 2 * E + c0, nc) * ldc(rows[2] + c0, nc)
                         + ldc(cw + 3 * E + c0, nc) * ldc(rows[3] + c0, nc);
                else
                    for (long j = 0; j < W; j++) v += ldc(cw + j * E + c0, nc) * ldc(rows[j] + c0, nc);
                if (a->silu) v = v / (splat(1.0f) + exp_v(-v));
                stc(us + c0, v, nc);
            }
        }
        memset(u + len * E, 0, (L - len) * E * sizeof(float));
    }
    free(zeros);
    free(rows);
    return LM_OK;
}

/* Tasks are batches: every direction adds to the same token rows. dx of position s needs the pre-activation
   gradients of positions s .. s + W - 1, so positions run backwards keeping the last W of them in a ring. */
int multi_scan_gather_bwd(const MultiScanArgs *a, int64_t start, int64_t end) {
    long L = a->seqlen, E = a->dim, W = a->width, T = a->ntok;
    float *zeros = (float *)calloc(E + VW, sizeof(float));
    float *ring = (float *)calloc(W * E + VW, sizeof(float));
    if (!zeros || !ring) { free(zeros); free(ring); return LM_OUT_OF_MEMORY; }
    for (long b = start; b < end; b++)
        for (long k = 0; k < a->ndir; k++) {
            const int64_t *idx = a->index + k * L;
            long len = real_length(idx, L, T);
            const float *du = a->du + (k * a->batch + b) * L * E;
            memset(ring, 0, W * E * sizeof(float));
            for (long s = len - 1; s >= 0; s--) {
                float *g = ring + (s % W) * E;
                for (long c0 = 0; c0 < E; c0 += VW) {
                    long nc = min_l(VW, E - c0);
                    vf d = ldc(du + s * E + c0, nc);
                    if (a->silu) {
                        vf pre = conv_pre(a, k, idx, b, s, c0, nc, zeros), sg = sigmoid_v(pre);
                        d = d * sg * (splat(1.0f) + pre * (splat(1.0f) - sg));
                    }
                    stc(g + c0, d, nc);
                    if (a->conv_b) addc(a->dconv_b + k * E + c0, d, nc);
                    for (long j = 0; j < W; j++)
                        addc(a->dconv_w + (k * W + j) * E + c0, d * ldc(x_row(a, idx, b, s - (W - 1) + j, zeros) + c0, nc),
                             nc);
                    vf dx = splat(0.0f);
                    for (long j = 0; j < W; j++) {
                        long q = s + W - 1 - j;
                        if (q < len) dx += ldc(a->conv_w + (k * W + j) * E + c0, nc) * ldc(ring + (q % W) * E + c0, nc);
                    }
                    if (idx[s] < T) {
                        float *dst = a->dsrc + (b * T + idx[s]) * a->src_stride + c0;
                        if (k == 0) stc(dst, dx, nc); else addc(dst, dx, nc);
                    }
                }
            }
        }
    free(zeros);
    free(ring);
    return LM_OK;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Selective scan.                                                                                              */

/* Per block of channels: pointers to its columns of the padded channel-major parameters (row stride pdim, so
   every load is a whole vector), and its dt bias and D. */
typedef struct {
    const float *A, *A2, *dtw;
    long ps;
    vf bias, D;
} Block;

/* Per-step vectors of one chunk of one channel block: dt, dt * u, the output so far (from D * u on), and the
   softplus derivative (backward). */
typedef struct {
    vf dt[TC], dtu[TC], y[TC], dsig[TC];
} Chunk;

/* The rows the steps of one chunk of a (direction, batch) pair read: token row (-1 for padding), u and xdbl. */
typedef struct {
    long tok[TC];
    const float *u[TC], *x[TC];
} Rows;

INLINE vf blk_A(const Block *p, long n) { return load(p->A + n * p->ps); }
INLINE vf blk_dtw(const Block *p, long r) { return load(p->dtw + r * p->ps); }

static void load_block(const MultiScanArgs *a, long k, long c0, long nc, Block *p) {
    long N = a->nstate, R = a->rank, E = a->dim, P = a->pdim;
    p->ps = P;
    p->A = a->A + k * N * P + c0;
    p->A2 = a->A2 + k * N * P + c0;
    p->dtw = a->dt_w + k * R * P + c0;
    p->bias = ldc(a->dt_b + k * E + c0, nc);
    p->D = a->D ? ldc(a->D + k * E + c0, nc) : splat(0.0f);
}

INLINE long xdbl_width(const MultiScanArgs *a) { return a->rank + 2 * a->nstate; }

/* Positions t0 .. t0 + nt - 1 of pair (k, b); zeros: a zero row of at least max(E, R + 2N) floats. */
static void chunk_rows(const MultiScanArgs *a, long k, long b, long t0, long nt, const float *zeros, Rows *r) {
    long L = a->seqlen, E = a->dim, T = a->ntok, S = xdbl_width(a), q = k * a->batch + b;
    const int64_t *idx = a->index + k * L;
    for (long i = 0; i < nt; i++) {
        long s = t0 + i, tok = idx[s] < T ? idx[s] : -1;
        r->tok[i] = tok;
        if (a->token_major) {
            r->u[i] = tok < 0 ? zeros : a->src + (b * T + tok) * a->src_stride;
            r->x[i] = tok < 0 ? zeros : a->xdbl + ((b * T + tok) * a->ndir + k) * S;
        } else {
            r->u[i] = a->u + (q * L + s) * E;
            r->x[i] = a->xdbl + (q * L + s) * S;
        }
    }
}

/* This block's columns of the u rows of the next chunk (fetched while the current chunk computes). */
INLINE void prefetch_rows(const Rows *next, long nt, long c0) {
    if (c0 % 16) return;
    for (long i = 0; i < nt; i++) __builtin_prefetch(next->u[i] + c0);
}

/* The per-step vectors of a chunk (see Chunk): dt = softplus(dt_w x_dbl[:R] + dt_b), R multiply-adds per step;
   dsig only when asked (backward). */
INLINE void chunk_inputs(const MultiScanArgs *a, const Block *p, const Rows *r, long c0, long nt, long nc, Chunk *c,
                         int with_dsig) {
    vf raw[TC];
    for (long i = 0; i < nt; i++) raw[i] = p->bias;
    for (long j = 0; j < a->rank; j++) {
        vf w = blk_dtw(p, j);
        for (long i = 0; i < nt; i++) raw[i] += splat(r->x[i][j]) * w;
    }
    for (long i = 0; i < nt; i++) {
        vf dt = softplus_v(raw[i]), uv = ldc(r->u[i] + c0, nc);
        c->dt[i] = dt;
        c->dtu[i] = dt * uv;
        c->y[i] = p->D * uv;
        if (with_dsig) c->dsig[i] = sigmoid_v(raw[i]);
    }
}

/* Forward steps of one chunk of one channel block from state h (updated in place), adding sum_n C h to c->y; the
   decays exp(dt A) are computed where they are used, NG states held in registers. */
INLINE void chunk_steps(const MultiScanArgs *a, const Block *p, const Rows *r, long c0, long nt, long nc, vf *h,
                        Chunk *c) {
    long N = a->nstate, R = a->rank, P = p->ps;
    chunk_inputs(a, p, r, c0, nt, nc, c, 0);
    for (long n0 = 0, nh; n0 < N; n0 += nh) {
        nh = min_l(NG, N - n0);
        const float *A2 = p->A2 + n0 * P;
        if (nh == NG) {
            vf hv[NG];
            for (long j = 0; j < NG; j++) hv[j] = h[n0 + j];
            for (long i = 0; i < nt; i++) {
                const float *Bt = r->x[i] + R + n0, *Ct = Bt + N;
                vf dt = c->dt[i], dtu = c->dtu[i], y0 = splat(0.0f), y1 = splat(0.0f);
                for (long j = 0; j < NG; j += 2) {
                    hv[j] = exp2_8_nonpos(dt * load(A2 + j * P)) * hv[j] + dtu * splat(Bt[j]);
                    y0 += hv[j] * splat(Ct[j]);
                    hv[j + 1] = exp2_8_nonpos(dt * load(A2 + (j + 1) * P)) * hv[j + 1] + dtu * splat(Bt[j + 1]);
                    y1 += hv[j + 1] * splat(Ct[j + 1]);
                }
                c->y[i] += y0 + y1;
            }
            for (long j = 0; j < NG; j++) h[n0 + j] = hv[j];
            continue;
        }
        vf hh[NG];
        for (long j = 0; j < nh; j++) hh[j] = h[n0 + j];
        for (long i = 0; i < nt; i++) {
            const float *Bt = r->x[i] + R + n0, *Ct = Bt + N;
            vf y0 = splat(0.0f);
            for (long j = 0; j < nh; j++) {
                hh[j] = exp2_8_nonpos(c->dt[i] * load(A2 + j * P)) * hh[j] + c->dtu[i] * splat(Bt[j]);
                y0 += hh[j] * splat(Ct[j]);
            }
            c->y[i] += y0;
        }
        for (long j = 0; j < nh; j++) h[n0 + j] = hh[j];
    }
}

/* Backward of one chunk of one channel block, NG states at a time: recompute the group's decays and states from the
   chunk-start state h0 (adding to c->y, whose full value the gate's gradient needs), then run the reverse-time
   recurrence on the group's state gradient g (carried across chunks, updated in place) with the gated output
   gradients dyg. Accumulates dB and dC per step (dBv, dCv: TC x N, summed over channel blocks by the caller), the
   per-step sums over states sB = sum_n g_n B_n and sA = sum_n (decayed g_n) h_(n, prev) A_n, and dA (dAacc, N). */
INLINE void chunk_backward(const MultiScanArgs *a, const Block *p, const Rows *r, long nt, const vf *h0, vf *g,
                           Chunk *c, const vf *dyg, vf *dBv, vf *dCv, vf *sB, vf *sA, vf *dAacc) {
    long N = a->nstate, R = a->rank, P = p->ps;
    vf at[TC][NG], hs[TC][NG];
    for (long i = 0; i < nt; i++) sB[i] = sA[i] = splat(0.0f);
    for (long n0 = 0, nh; n0 < N; n0 += nh) {
        nh = min_l(NG, N - n0);
        vf hh[NG], gg[NG], dAg[NG];
        for (long j = 0; j < nh; j++) {
            hh[j] = h0[n0 + j];
            gg[j] = g[n0 + j];
            dAg[j] = splat(0.0f);
        }
        for (long i = 0; i < nt; i++) {
            const float *Bt = r->x[i] + R + n0, *Ct = Bt + N;
            vf y0 = splat(0.0f);
            for (long j = 0; j < nh; j++) {
                at[i][j] = exp2_8_nonpos(c->dt[i] * load(p->A2 + (n0 + j) * P));
                hh[j] = at[i][j] * hh[j] + c->dtu[i] * splat(Bt[j]);
                hs[i][j] = hh[j];
                y0 += hh[j] * splat(Ct[j]);
            }
            c->y[i] += y0;
        }
        for (long i = nt - 1; i >= 0; i--) {
            const float *Bt = r->x[i] + R + n0, *Ct = Bt + N;
            vf dyv = dyg[i], dtu = c->dtu[i], dt = c->dt[i], sBi = splat(0.0f), sAi = splat(0.0f);
            vf *dBt = dBv + i * N + n0, *dCt = dCv + i * N + n0;
            for (long j = 0; j < nh; j++) {
                vf gn = gg[j] + dyv * splat(Ct[j]);
                dCt[j] += dyv * hs[i][j];
                dBt[j] += gn * dtu;
                sBi += gn * splat(Bt[j]);
                gn = gn * at[i][j];
                vf da = gn * (i > 0 ? hs[i - 1][j] : h0[n0 + j]);
                dAg[j] += da * dt;
                sAi += da * blk_A(p, n0 + j);
                gg[j] = gn;
            }
            sB[i] += sBi;
            sA[i] += sAi;
        }
        for (long j = 0; j < nh; j++) {
            g[n0 + j] = gg[j];
            dAacc[n0 + j] += dAg[j];
        }
    }
}

/* Floats of the chunk-start states of one (direction, batch) pair: chunks x channel blocks x N vectors. */
int64_t multi_scan_checkpoint_floats(int64_t seqlen, int64_t dim, int64_t nstate) {
    return (seqlen + TC - 1) / TC * ((dim + VW - 1) / VW) * nstate * VW;
}

INLINE vf silu_v(vf z) { return z * sigmoid_v(z); }

/* Forward scan of (direction, batch) pairs q = k * Bt + b: writes y[b, k] (gated) at every token row, and the
   chunk-start states to ckpt when given. */
int multi_scan_recurrence_fwd(const MultiScanArgs *a, int64_t start, int64_t end) {
    long L = a->seqlen, E = a->dim, N = a->nstate, T = a->ntok, K = a->ndir;
    long nb = (E + VW - 1) / VW, per_pair = multi_scan_checkpoint_floats(L, E, N);
    Block p;
    Chunk c;
    Rows r, next;
    float *out[TC];
    const float *z[TC];
    vf *h = alloc_vf(nb * N);
    float *zeros = (float *)calloc(E + xdbl_width(a) + VW, sizeof(float));
    int status = h && zeros ? LM_OK : LM_OUT_OF_MEMORY;
    if (status != LM_OK) goto done;
    for (long q = start; q < end; q++) {
        long k = q / a->batch, b = q % a->batch;
        long len = real_length(a->index + k * L, L, T);
        float *ck = a->ckpt ? a->ckpt + q * per_pair : NULL;
        for (long i = 0; i < nb * N; i++) h[i] = splat(0.0f);
        if (len > 0) chunk_rows(a, k, b, 0, min_l(TC, len), zeros, &next);
        for (long t0 = 0, ci = 0; t0 < len; t0 += TC, ci++) {
            long nt = min_l(TC, len - t0), nt_next = min_l(TC, len - t0 - TC);
            r = next;
            if (nt_next > 0) chunk_rows(a, k, b, t0 + TC, nt_next, zeros, &next);
            for (long i = 0; i < nt; i++) {
                long tok = r.tok[i];
                out[i] = tok < 0 ? NULL : a->y + ((b * K + k) * T + tok) * E;
                z[i] = tok < 0 || !a->gate ? NULL : a->src + (b * T + tok) * a->src_stride + E;
            }
            for (long cb = 0; cb < nb; cb++) {
                long c0 = cb * VW, nc = min_l(VW, E - c0);
                if (ck) memcpy(ck + (ci * nb + cb) * N * VW, h + cb * N, N * sizeof(vf));
                prefetch_rows(&next, nt_next, c0);
                load_block(a, k, c0, nc, &p);
                chunk_steps(a, &p, &r, c0, nt, nc, h + cb * N, &c);
                for (long i = 0; i < nt; i++) {
                    if (!out[i]) continue;
                    stc(out[i] + c0, z[i] ? c.y[i] * silu_v(ldc(z[i] + c0, nc)) : c.y[i], nc);
                }
            }
        }
    }
done:
    free(h); free(zeros);
    return status;
}

/* Tasks are batches (every direction's gradient adds to the same token rows). */
int multi_scan_recurrence_bwd(const MultiScanArgs *a, int64_t start, int64_t end) {
    long L = a->seqlen, E = a->dim, N = a->nstate, R = a->rank, T = a->ntok, S = xdbl_width(a), K = a->ndir;
    long nb = (E + VW - 1) / VW, nchunks = (L + TC - 1) / TC;
    Block *p = (Block *)aligned_alloc(VBYTES, sizeof(Block));
    Chunk *c = (Chunk *)aligned_alloc(VBYTES, sizeof(Chunk));
    Rows r;
    const float *dyr[TC], *z[TC];
    float *du[TC], *dz[TC], *dx[TC];
    vf *h = alloc_vf(nb * N), *g = alloc_vf(nb * N), *ckpt = alloc_vf(nchunks * nb * N);
    vf *dBv = alloc_vf(TC * N), *dCv = alloc_vf(TC * N), *dxl = alloc_vf(TC * (R > 0 ? R : 1));
    vf *dAacc = alloc_vf(N), *ddtw = alloc_vf(R > 0 ? R : 1), *dyg = alloc_vf(TC), *sB = alloc_vf(TC);
    vf *sA = alloc_vf(TC);
    float *zeros = (float *)calloc(E + S + VW, sizeof(float));
    int status = p && c && h && g && ckpt && dBv && dCv && dxl && dAacc && ddtw && dyg && sB && sA && zeros
                     ? LM_OK : LM_OUT_OF_MEMORY;
    if (status != LM_OK) goto done;
    for (long b = start; b < end; b++)
        for (long k = 0; k < K; k++) {
            long q = k * a->batch + b;
            long len = real_length(a->index + k * L, L, T);
            if (!a->token_major) {
                memset(a->du + (q * L + len) * E, 0, (L - len) * E * sizeof(float));
                memset(a->dxdbl + (q * L + len) * S, 0, (L - len) * S * sizeof(float));
            }
            /* the state before every chunk: saved by the forward, or a forward sweep */
            if (a->ckpt)
                memcpy(ckpt, a->ckpt + q * multi_scan_checkpoint_floats(L, E, N), nchunks * nb * N * sizeof(vf));
            for (long i = 0; i < nb * N; i++) h[i] = splat(0.0f);
            for (long t0 = 0, ci = 0; t0 < len && !a->ckpt; t0 += TC, ci++) {
                long nt = min_l(TC, len - t0);
                chunk_rows(a, k, b, t0, nt, zeros, &r);
                for (long cb = 0; cb < nb; cb++) {
                    long c0 = cb * VW, nc = min_l(VW, E - c0);
                    memcpy(ckpt + (ci * nb + cb) * N, h + cb * N, N * sizeof(vf));
                    if (t0 + nt < len) {
                        load_block(a, k, c0, nc, p);
                        chunk_steps(a, p, &r, c0, nt, nc, h + cb * N, c);
                    }
                }
            }
            /* reverse sweep */
            for (long i = 0; i < nb * N; i++) g[i] = splat(0.0f);
            for (long ci = (len + TC - 1) / TC - 1; ci >= 0; ci--) {
                long t0 = ci * TC, nt = min_l(TC, len - t0);
                chunk_rows(a, k, b, t0, nt, zeros, &r);
                for (long i = 0; i < nt; i++) {
                    long tok = r.tok[i], row = b * T + tok, real = tok >= 0, gated = real && a->gate;
                    dyr[i] = real ? a->dy + ((b * K + k) * T + tok) * E : NULL;
                    z[i] = gated ? a->src + row * a->src_stride + E : NULL;
                    dz[i] = gated ? a->dsrc + row * a->src_stride + E : NULL;
                    if (a->token_major) {
                        du[i] = real ? a->dsrc + row * a->src_stride : NULL;
                        dx[i] = real ? a->dxdbl + (row * K + k) * S : NULL;
                    } else {
                        du[i] = a->du + (q * L + t0 + i) * E;
                        dx[i] = a->dxdbl + (q * L + t0 + i) * S;
                    }
                }
                for (long i = 0; i < nt * N; i++) dBv[i] = dCv[i] = splat(0.0f);
                for (long i = 0; i < nt * R; i++) dxl[i] = splat(0.0f);
                for (long cb = 0; cb < nb; cb++) {
                    long c0 = cb * VW, nc = min_l(VW, E - c0);
                    load_block(a, k, c0, nc, p);
                    chunk_inputs(a, p, &r, c0, nt, nc, c, 1);
                    for (long i = 0; i < nt; i++) {
                        vf dyv = dyr[i] ? ldc(dyr[i] + c0, nc) : splat(0.0f);
                        dyg[i] = z[i] ? dyv * silu_v(ldc(z[i] + c0, nc)) : dyv;
                    }
                    for (long n = 0; n < N; n++) dAacc[n] = splat(0.0f);
                    chunk_backward(a, p, &r, nt, ckpt + (ci * nb + cb) * N, g + cb * N, c, dyg, dBv, dCv, sB, sA,
                                   dAacc);
                    vf dDacc = splat(0.0f), dbias = splat(0.0f);
                    for (long j = 0; j < R; j++) ddtw[j] = splat(0.0f);
                    for (long i = 0; i < nt; i++) {
                        const float *x = r.x[i];
                        vf uv = ldc(r.u[i] + c0, nc), dt = c->dt[i];
                        if (z[i]) {
                            vf zv = ldc(z[i] + c0, nc), sz = sigmoid_v(zv);
                            vf dzv = ldc(dyr[i] + c0, nc) * c->y[i] * sz * (splat(1.0f) + zv * (splat(1.0f) - sz));
                            if (k == 0) stc(dz[i] + c0, dzv, nc);
                            else addc(dz[i] + c0, dzv, nc);
                        }
                        dDacc += dyg[i] * uv;
                        if (du[i]) {
                            vf duv = dyg[i] * p->D + dt * sB[i];
                            if (a->token_major && k > 0) addc(du[i] + c0, duv, nc);
                            else stc(du[i] + c0, duv, nc);
                        }
                        vf dl = (sB[i] * uv + sA[i]) * c->dsig[i];
                        dbias += dl;
                        for (long j = 0; j < R; j++) {
                            ddtw[j] += dl * splat(x[j]);
                            dxl[i * R + j] += dl * blk_dtw(p, j);
                        }
                    }
                    for (long n = 0; n < N; n++) addc(a->dA + (k * N + n) * E + c0, dAacc[n], nc);
                    for (long j = 0; j < R; j++) addc(a->ddt_w + (k * R + j) * E + c0, ddtw[j], nc);
                    addc(a->ddt_b + k * E + c0, dbias, nc);
                    if (a->dD) addc(a->dD + k * E + c0, dDacc, nc);
                }
                for (long i = 0; i < nt; i++) {
                    float *row = dx[i];
                    if (!row) continue;
                    for (long j = 0; j < R; j++) row[j] = hsum(dxl[i * R + j]);
                    for (long n = 0; n < N; n++) {
                        row[R + n] = hsum(dBv[i * N + n]);
                        row[R + N + n] = hsum(dCv[i * N + n]);
                    }
                }
            }
        }
done:
    free(p); free(c); free(h); free(g); free(ckpt); free(dBv); free(dCv); free(dxl); free(dAacc); free(ddtw);
    free(dyg); free(sB); free(sA); free(zeros);
    return status;
}

/* The cpu backend's selective-scan kernel, compiled on first use by localmamba_kernel_runtime.ckernel with the
   system C compiler (no torch headers) and called through ctypes by selective_scan_cpu.py.

   Layout contract: fp32 contiguous buffers; u, delta, z, dout, out, du, ddelta, dz (Bt, Dm, L); A (Dm, Np) with
   Np a multiple of VW (zero padded; lm_vector_width() tells callers VW); B and C either time-invariant (Dm, Np) or
   grouped (Bt, G, L, Np). One call processes the (batch, channel) pairs [start, end); callers run several calls in
   parallel threads, each with its own accumulators for dA, dB, dC, dD and ddelta_bias, which the call adds to.

   Per (batch, channel) row, work is split into passes that keep the vector units busy: element-wise passes over time
   (softplus, gates), then the recurrence (one multiply-add per step on the dependency chain, each decay exp(dt A)
   computed beside it), with horizontal sums batched eight steps at a time. The backward pass recomputes the row's
   decays and states into scratch buffers, then runs the reverse-time recurrence (again one multiply-add per step on
   its chain). */
#include "kernel_args.h"
#include "vector_math.h"

#define MAXVEC (256 / 8) /* Np <= 256 with 8 lanes, <= 512 with 16 */

/* groups_b / groups_c: 0 for time-invariant B / C; D, z, delta_bias, last_state, dlast may be NULL;
   dA, dB, dC, dD, ddelta_bias are this task's accumulators */
#define SELECTIVE_SCAN_ARGS(FIELD, S)                                                                              \
    FIELD(S, int64_t, batch) FIELD(S, int64_t, dim) FIELD(S, int64_t, seqlen) FIELD(S, int64_t, nstate)            \
    FIELD(S, int64_t, groups_b) FIELD(S, int64_t, groups_c) FIELD(S, int64_t, softplus)                            \
    FIELD(S, const float *, u) FIELD(S, const float *, delta) FIELD(S, const float *, A)                           \
    FIELD(S, const float *, B) FIELD(S, const float *, C) FIELD(S, const float *, D) FIELD(S, const float *, z)     \
    FIELD(S, const float *, delta_bias) FIELD(S, float *, out) FIELD(S, float *, last_state)                       \
    FIELD(S, const float *, dout) FIELD(S, const float *, dlast) FIELD(S, float *, du) FIELD(S, float *, ddelta)   \
    FIELD(S, float *, dz) FIELD(S, float *, dA) FIELD(S, float *, dB) FIELD(S, float *, dC) FIELD(S, float *, dD)  \
    FIELD(S, float *, ddelta_bias)
DECLARE_KERNEL_ARGS(SelectiveScanArgs, SELECTIVE_SCAN_ARGS)

/* Element-wise pass over time: dt = [softplus](delta + bias); dsig = sigmoid(delta + bias) (the softplus
   derivative); zsig = sigmoid(z), gate = z * zsig. Outputs other than dt may be NULL. */
static void prepare_row(const float *delta, float bias, long softplus, const float *z, long L,
                        float *dt, float *dsig, float *gate, float *zsig) {
    for (long t = 0; t < L; t += VW) {
        long n = L - t < VW ? L - t : VW;
        int full = n == VW;
        vf raw = (full ? load(delta + t) : load_part(delta + t, n)) + splat(bias);
        vf v = softplus ? softplus_v(raw) : raw;
        if (full) store(dt + t, v); else store_part(dt + t, v, n);
        if (dsig && softplus) {
            v = sigmoid_v(raw);
            if (full) store(dsig + t, v); else store_part(dsig + t, v, n);
        }
        if (z) {
            vf zv = full ? load(z + t) : load_part(z + t, n);
            vf s = sigmoid_v(zv);
            if (zsig) {
                if (full) store(zsig + t, s); else store_part(zsig + t, s, n);
            }
            if (full) store(gate + t, zv * s); else store_part(gate + t, zv * s, n);
        }
    }
}

/* Pointer to the B (or C) rows used by channel d of batch b, and the stride between time steps (0 when constant). */
INLINE const float *bc_rows(const float *M, long groups, long b, long d, const SelectiveScanArgs *a, long *tstride) {
    if (groups == 0) {
        *tstride = 0;
        return M + d * a->nstate;
    }
    long g = d / (a->dim / groups);
    *tstride = a->nstate;
    return M + (b * groups + g) * a->seqlen * a->nstate;
}

/* The recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; y[t] = <h_t, C_t> + D u_t. A2 is A pre-scaled by
   EXP2_8_SCALE; nonpos: every dt_t A is <= 0 (softplus'd dt, A <= 0), so the decays need only the lower clamp.
   Forward only (keep unset): each decay is computed right where it is used. With keep (the backward's recompute)
   the work goes in chunks of TC steps: first all decays of the chunk (independent, so they pipeline) into as at
   their step's place, then the chunk's recurrence, storing every h_t in hs. last (optional) receives the final
   state. acc: L x VW scratch for the batched horizontal sums. */
#define TC 32
INLINE vf decay(vf x, int nonpos) { return nonpos ? exp2_8_nonpos(x) : exp2_8(x); }

INLINE void recur(long L, long nvec, long Np, const float *dt, const float *u, const float *A2,
                  const float *Bp, long bst, const float *Cp, long cst, float Dd, int nonpos,
                  float *y, float *acc, float *as, int keep, float *hs, float *last) {
    vf h[MAXVEC], Av[MAXVEC];
    for (long j = 0; j < nvec; j++) {
        h[j] = splat(0.0f);
        Av[j] = load(A2 + j * VW);
    }
    if (!keep) {
        for (long t = 0; t < L; t++) {
            vf dtv = splat(dt[t]), dbu = splat(dt[t] * u[t]), s = splat(0.0f);
            const float *Bt = Bp + t * bst, *Ct = Cp + t * cst;
            for (long j = 0; j < nvec; j++) {
                h[j] = decay(dtv * Av[j], nonpos) * h[j] + dbu * load(Bt + j * VW);
                s += h[j] * load(Ct + j * VW);
            }
            store(acc + t * VW, s);
        }
    } else {
        for (long t0 = 0; t0 < L; t0 += TC) {
            long t1 = t0 + TC < L ? t0 + TC : L;
            for (long t = t0; t < t1; t++) {
                vf dtv = splat(dt[t]);
                for (long j = 0; j < nvec; j++) store(as + t * Np + j * VW, decay(dtv * Av[j], nonpos));
            }
            for (long t = t0; t < t1; t++) {
                vf dbu = splat(dt[t] * u[t]);
                const float *Bt = Bp + t * bst, *Ct = Cp + t * cst, *at = as + t * Np;
                vf s = splat(0.0f);
                for (long j = 0; j < nvec; j++) {
                    h[j] = load(at + j * VW) * h[j] + dbu * load(Bt + j * VW);
                    s += h[j] * load(Ct + j * VW);
                    store(hs + t * Np + j * VW, h[j]);
                }
                store(acc + t * VW, s);
            }
        }
    }
    hsum_rows(acc, L, y);
    for (long t = 0; t < L; t++) y[t] += Dd * u[t];
    if (last)
        for (long j = 0; j < nvec; j++) store(last + j * VW, h[j]);
}

/* Work buffers of one call: per-step scalars, the batched-sum rows, and L x Np decays and states. */
typedef struct {
    float *dt, *dsig, *gate, *zsig, *y, *dy, *sb, *sa, *acc, *acc2, *as, *hs;
    float A2[MAXVEC * VW];
    float zeros[MAXVEC * VW]; /* the state before the first step */
} Work;

static float *work_alloc(Work *w, long L, long Np) {
    float *mem = (float *)malloc((8 * L + 2 * L * VW + 2 * L * Np) * sizeof(float));
    if (!mem) return NULL;
    float *p = mem;
    memset(w->zeros, 0, sizeof(w->zeros));
    w->dt = p; p += L;
    w->dsig = p; p += L;
    w->gate = p; p += L;
    w->zsig = p; p += L;
    w->y = p; p += L;
    w->dy = p; p += L;
    w->sb = p; p += L;
    w->sa = p; p += L;
    w->acc = p; p += L * VW;
    w->acc2 = p; p += L * VW;
    w->as = p; p += L * Np;
    w->hs = p;
    return mem;
}

/* Forward of one row, up to y (before the z gate); optionally keeps the states. */
INLINE void forward_row(const SelectiveScanArgs *a, Work *w, long p, int backward, long nvec) {
    long L = a->seqlen, Np = a->nstate, b = p / a->dim, d = p % a->dim, off = p * L, bst, cst;
    const float *zr = a->z ? a->z + off : NULL;
    prepare_row(a->delta + off, a->delta_bias ? a->delta_bias[d] : 0.0f, a->softplus, zr, L, w->dt,
                backward ? w->dsig : NULL, w->gate, backward ? w->zsig : NULL);
    int nonpos = (int)a->softplus;
    for (long n = 0; n < Np; n++) {
        w->A2[n] = a->A[d * Np + n] * EXP2_8_SCALE;
        nonpos &= a->A[d * Np + n] <= 0.0f;
    }
    const float *Bp = bc_rows(a->B, a->groups_b, b, d, a, &bst);
    const float *Cp = bc_rows(a->C, a->groups_c, b, d, a, &cst);
    float *last = !backward && a->last_state ? a->last_state + p * Np : NULL;
    float Dd = a->D ? a->D[d] : 0.0f;
    if (nonpos)
        recur(L, nvec, Np, w->dt, a->u + off, w->A2, Bp, bst, Cp, cst, Dd, 1, w->y, w->acc, w->as, backward, w->hs,
              last);
    else
        recur(L, nvec, Np, w->dt, a->u + off, w->A2, Bp, bst, Cp, cst, Dd, 0, w->y, w->acc, w->as, backward, w->hs,
              last);
}

static void forward_rows(const SelectiveScanArgs *a, Work *w, long start, long end, long nvec) {
    long L = a->seqlen;
    for (long p = start; p < end; p++) {
        forward_row(a, w, p, 0, nvec);
        float *o = a->out + p * L;
        if (a->z)
            for (long t = 0; t < L; t++) o[t] = w->y[t] * w->gate[t];
        else
            memcpy(o, w->y, L * sizeof(float));
    }
}

typedef void (*RowsFn)(const SelectiveScanArgs *, Work *, long, long, long);

/* rows(a, w, start, end, nvec) with this call's work buffers; inlined into each entry point with rows fixed, so that
   nvec is a compile-time constant for the usual state sizes (N = 8, 16, 32). */
INLINE int run_rows(const SelectiveScanArgs *a, int64_t start, int64_t end, RowsFn rows) {
    Work w;
    float *mem = work_alloc(&w, a->seqlen, a->nstate);
    if (!mem) return LM_OUT_OF_MEMORY;
    switch (a->nstate / VW) {
    case 1: rows(a, &w, start, end, 1); break;
    case 2: rows(a, &w, start, end, 2); break;
    case 4: rows(a, &w, start, end, 4); break;
    default: rows(a, &w, start, end, a->nstate / VW); break;
    }
    free(mem);
    return LM_OK;
}

int selective_scan_fwd(const SelectiveScanArgs *a, int64_t start, int64_t end) {
    return run_rows(a, start, end, forward_rows);
}

/* Reverse-time pass of one row. g = dLoss/dh_t starts at dlast and is carried back through the decays.
   Adds into dA (Np), dB / dC (time rows, or one Np row when constant), dD and ddelta_bias. */
INLINE void reverse_row(const SelectiveScanArgs *a, Work *w, long p, long nvec) {
    long L = a->seqlen, Np = a->nstate, b = p / a->dim, d = p % a->dim, off = p * L, bst, cst;
    const float *u = a->u + off, *dout = a->dout + off, *A = a->A + d * Np;
    const float *Bp = bc_rows(a->B, a->groups_b, b, d, a, &bst);
    const float *Cp = bc_rows(a->C, a->groups_c, b, d, a, &cst);
    float *dBp = (float *)bc_rows(a->dB, a->groups_b, b, d, a, &bst);
    float *dCp = (float *)bc_rows(a->dC, a->groups_c, b, d, a, &cst);
    float Dd = a->D ? a->D[d] : 0.0f;
    if (a->z) {
        const float *zr = a->z + off;
        float *dz = a->dz + off;
        for (long t = 0; t < L; t++) {
            float s = w->zsig[t];
            dz[t] = dout[t] * w->y[t] * s * (1.0f + zr[t] * (1.0f - s));
            w->dy[t] = dout[t] * w->gate[t];
        }
    } else {
        memcpy(w->dy, dout, L * sizeof(float));
    }
    vf g[MAXVEC], Av[MAXVEC], dAacc[MAXVEC], dBc[MAXVEC], dCc[MAXVEC];
    const float *dlast = a->dlast ? a->dlast + p * Np : NULL;
    for (long j = 0; j < nvec; j++) {
        g[j] = dlast ? load(dlast + j * VW) : splat(0.0f);
        Av[j] = load(A + j * VW);
        dAacc[j] = dBc[j] = dCc[j] = splat(0.0f);
    }
    for (long t = L - 1; t >= 0; t--) {
        vf dyv = splat(w->dy[t]), dtu = splat(w->dt[t] * u[t]), dtv = splat(w->dt[t]);
        vf sB = splat(0.0f), sA = splat(0.0f);
        const float *Bt = Bp + t * bst, *Ct = Cp + t * cst, *ht = w->hs + t * Np, *at = w->as + t * Np;
        const float *hprev = t > 0 ? ht - Np : w->zeros;
        float *dBt = dBp + t * bst, *dCt = dCp + t * cst;
        for (long j = 0; j < nvec; j++) {
            vf hv = load(ht + j * VW), av = load(at + j * VW), hp = load(hprev + j * VW);
            vf dyc = dyv * load(Ct + j * VW), gt = g[j] + dyc; /* dLoss/dh_t */
            if (cst) store(dCt + j * VW, load(dCt + j * VW) + dyv * hv); else dCc[j] += dyv * hv;
            if (bst) store(dBt + j * VW, load(dBt + j * VW) + gt * dtu); else dBc[j] += gt * dtu;
            sB += gt * load(Bt + j * VW);
            /* carried back to step t-1 as a_t g + a_t dyc (one multiply-add on the chain from step to step);
               also d(loss)/d(decay_t) = that times h_{t-1} */
            g[j] = av * g[j] + av * dyc;
            vf da = g[j] * hp;
            dAacc[j] += da * dtv;
            sA += da * Av[j];
        }
        store(w->acc + t * VW, sB);
        store(w->acc2 + t * VW, sA);
    }
    for (long j = 0; j < nvec; j++) {
        store(a->dA + d * Np + j * VW, load(a->dA + d * Np + j * VW) + dAacc[j]);
        if (!bst) store(dBp + j * VW, load(dBp + j * VW) + dBc[j]);
        if (!cst) store(dCp + j * VW, load(dCp + j * VW) + dCc[j]);
    }
    hsum_rows(w->acc, L, w->sb);
    hsum_rows(w->acc2, L, w->sa);
    float *du = a->du + off, *ddelta = a->ddelta + off;
    float dDs = 0.0f, dbs = 0.0f;
    for (long t = 0; t < L; t++) {
        float ddt = w->sb[t] * u[t] + w->sa[t];
        du[t] = w->dy[t] * Dd + w->dt[t] * w->sb[t];
        ddelta[t] = a->softplus ? ddt * w->dsig[t] : ddt;
        dbs += ddelta[t];
        dDs += w->dy[t] * u[t];
    }
    a->dD[d] += dDs;
    a->ddelta_bias[d] += dbs;
}

static void backward_rows(const SelectiveScanArgs *a, Work *w, long start, long end, long nvec) {
    for (long p = start; p < end; p++) {
        forward_row(a, w, p, 1, nvec);
        reverse_row(a, w, p, nvec);
    }
}

int selective_scan_bwd(const SelectiveScanArgs *a, int64_t start, int64_t end) {
    return run_rows(a, start, end, backward_rows);
}

"""C source of the CPU selective-scan kernel (kept in a .py file so that every kind of install ships it).

``localmamba_conv1d.ckernel`` compiles it on first use with the system C compiler (no torch headers) and
``selective_scan_cpu.py`` calls it through ctypes. Layout contract: fp32 contiguous buffers; u, delta, z, dout, out, du, ddelta, dz
(Bt, Dm, L); A (Dm, Np) with Np a multiple of 8 (zero padded); B and C either time-invariant (Dm, Np) or grouped
(Bt, G, L, Np). One call processes the (batch, channel) pairs [start, end); callers run several calls in parallel
threads, each with its own accumulators for dA, dB, dC, dD and ddelta_bias, which the call adds to.
It vectorises over the state dimension with the shared vector prelude (``localmamba_conv1d.vector_math``).
"""
from localmamba_conv1d.vector_math import PRELUDE

SOURCE = PRELUDE + r"""
#define MAXVEC 32 /* Np <= 256 */

typedef struct {
    long batch, dim, seqlen, nstate;
    long groups_b, groups_c;
    long softplus;
    const float *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
    float *out, *last_state;
    const float *dout, *dlast;
    float *du, *ddelta, *dz;
    float *dA, *dB, *dC, *dD, *ddelta_bias;
} ScanArgs;

/* Per-row preparation over time: dt = [softplus](delta + bias); dsig = sigmoid(delta + bias) (softplus'
   derivative); zsig = sigmoid(z), gate = z * zsig. Outputs other than dt may be NULL. */
static void prepare_row(const float *delta, float bias, long softplus, const float *z, long L,
                        float *dt, float *dsig, float *gate, float *zsig) {
    for (long t = 0; t < L; t += VW) {
        long n = L - t < VW ? L - t : VW;
        vf raw = load_part(delta + t, n) + splat(bias);
        store_part(dt + t, softplus ? softplus_v(raw) : raw, n);
        if (dsig && softplus)
            store_part(dsig + t, sigmoid_v(raw), n);
        if (z) {
            vf zv = load_part(z + t, n);
            vf s = sigmoid_v(zv);
            if (zsig)
                store_part(zsig + t, s, n);
            store_part(gate + t, zv * s, n);
        }
    }
}

/* Pointer to the B (or C) rows used by channel d of batch b, and the stride between time steps (0 when constant). */
INLINE const float *bc_rows(const float *M, long groups, long b, long d, const ScanArgs *a, long *tstride) {
    if (groups == 0) {
        *tstride = 0;
        return M + d * a->nstate;
    }
    long g = d / (a->dim / groups);
    *tstride = a->nstate;
    return M + (b * groups + g) * a->seqlen * a->nstate;
}

/* Forward recurrence for one (b, d) row: y[t] = <h_t, C_t> + D u_t. Optionally saves every h_t and exp(dt A)
   (hs, as: L x Np) and the last state. */
INLINE void recur(long L, long nvec, long Np, const float *dt, const float *u, const float *A,
                  const float *Bp, long bst, const float *Cp, long cst, float Dd,
                  float *y, float *hs, float *as, float *last) {
    vf h[MAXVEC], Av[MAXVEC];
    for (long j = 0; j < nvec; j++) {
        h[j] = splat(0.0f);
        Av[j] = load(A + j * VW);
    }
    for (long t = 0; t < L; t++) {
        vf dtv = splat(dt[t]);
        vf dbu = splat(dt[t] * u[t]);
        const float *Bt = Bp + t * bst, *Ct = Cp + t * cst;
        vf acc = splat(0.0f);
        for (long j = 0; j < nvec; j++) {
            vf av = exp_v(dtv * Av[j]);
            h[j] = av * h[j] + dbu * load(Bt + j * VW);
            acc += h[j] * load(Ct + j * VW);
            if (hs) {
                store(hs + t * Np + j * VW, h[j]);
                store(as + t * Np + j * VW, av);
            }
        }
        y[t] = hsum(acc) + Dd * u[t];
    }
    if (last)
        for (long j = 0; j < nvec; j++) store(last + j * VW, h[j]);
}

static void recur_any(long L, long nvec, long Np, const float *dt, const float *u, const float *A,
                      const float *Bp, long bst, const float *Cp, long cst, float Dd,
                      float *y, float *hs, float *as, float *last) {
    switch (nvec) {
    case 1: recur(L, 1, Np, dt, u, A, Bp, bst, Cp, cst, Dd, y, hs, as, last); break;
    case 2: recur(L, 2, Np, dt, u, A, Bp, bst, Cp, cst, Dd, y, hs, as, last); break;
    case 4: recur(L, 4, Np, dt, u, A, Bp, bst, Cp, cst, Dd, y, hs, as, last); break;
    default: recur(L, nvec, Np, dt, u, A, Bp, bst, Cp, cst, Dd, y, hs, as, last); break;
    }
}

void scan_fwd(const ScanArgs *a, long start, long end) {
    long L = a->seqlen, Np = a->nstate, nvec = Np / VW;
    float *work = (float *)malloc(3 * L * sizeof(float));
    float *dt = work, *gate = work + L, *y = work + 2 * L;
    for (long p = start; p < end; p++) {
        long b = p / a->dim, d = p % a->dim, off = p * L, bst, cst;
        const float *zr = a->z ? a->z + off : NULL;
        prepare_row(a->delta + off, a->delta_bias ? a->delta_bias[d] : 0.0f, a->softplus, zr, L, dt, NULL, gate,
                    NULL);
        const float *Bp = bc_rows(a->B, a->groups_b, b, d, a, &bst);
        const float *Cp = bc_rows(a->C, a->groups_c, b, d, a, &cst);
        recur_any(L, nvec, Np, dt, a->u + off, a->A + d * Np, Bp, bst, Cp, cst, a->D ? a->D[d] : 0.0f, y, NULL,
                  NULL, a->last_state ? a->last_state + p * Np : NULL);
        float *o = a->out + off;
        if (zr)
            for (long t = 0; t < L; t++) o[t] = y[t] * gate[t];
        else
            memcpy(o, y, L * sizeof(float));
    }
    free(work);
}

/* Reverse-time pass for one (b, d) row. g holds dLoss/dh_t; it starts at dlast and is carried back through
   exp(dt A). Accumulates into dA (Np), dB / dC (rows with time stride, or one Np row when constant), dD, dbias. */
INLINE void reverse(long L, long nvec, long Np, const float *dt, const float *dsig, const float *gate,
                    const float *zsig, const float *zr, const float *y, const float *hs, const float *as,
                    const float *u, const float *dout, const float *A, const float *Bp, long bst,
                    const float *Cp, long cst, float Dd, const float *dlast, float *dBp, float *dCp, float *dA,
                    float *du, float *ddelta, float *dz, float *dD, float *dbias) {
    vf g[MAXVEC], Av[MAXVEC], dAacc[MAXVEC], dBc[MAXVEC], dCc[MAXVEC];
    for (long j = 0; j < nvec; j++) {
        g[j] = dlast ? load(dlast + j * VW) : splat(0.0f);
        Av[j] = load(A + j * VW);
        dAacc[j] = dBc[j] = dCc[j] = splat(0.0f);
    }
    float dDs = 0.0f, dbs = 0.0f;
    for (long t = L - 1; t >= 0; t--) {
        float dy = dout[t];
        if (zr) {
            float s = zsig[t];
            dz[t] = dy * y[t] * s * (1.0f + zr[t] * (1.0f - s));
            dy *= gate[t];
        }
        float ut = u[t], dtt = dt[t];
        dDs += dy * ut;
        vf dyv = splat(dy), dtu = splat(dtt * ut), dtv = splat(dtt);
        vf sB = splat(0.0f), sA = splat(0.0f);
        const float *Bt = Bp + t * bst, *Ct = Cp + t * cst, *ht = hs + t * Np, *at = as + t * Np;
        for (long j = 0; j < nvec; j++) {
            vf hv = load(ht + j * VW), av = load(at + j * VW);
            vf hp = t > 0 ? load(ht - Np + j * VW) : splat(0.0f);
            g[j] += dyv * load(Ct + j * VW);
            if (cst)
                store(dCp + t * Np + j * VW, load(dCp + t * Np + j * VW) + dyv * hv);
            else
                dCc[j] += dyv * hv;
            if (bst)
                store(dBp + t * Np + j * VW, load(dBp + t * Np + j * VW) + g[j] * dtu);
            else
                dBc[j] += g[j] * dtu;
            sB += g[j] * load(Bt + j * VW);
            vf da = g[j] * hp * av;
            dAacc[j] += da * dtv;
            sA += da * Av[j];
            g[j] = g[j] * av;
        }
        float sb = hsum(sB);
        float ddt = sb * ut + hsum(sA);
        du[t] = dy * Dd + dtt * sb;
        float draw = dsig ? ddt * dsig[t] : ddt;
        ddelta[t] = draw;
        dbs += draw;
    }
    for (long j = 0; j < nvec; j++) {
        store(dA + j * VW, load(dA + j * VW) + dAacc[j]);
        if (!bst) store(dBp + j * VW, load(dBp + j * VW) + dBc[j]);
        if (!cst) store(dCp + j * VW, load(dCp + j * VW) + dCc[j]);
    }
    *dD += dDs;
    *dbias += dbs;
}

static void reverse_any(long L, long nvec, long Np, const float *dt, const float *dsig, const float *gate,
                        const float *zsig, const float *zr, const float *y, const float *hs, const float *as,
                        const float *u, const float *dout, const float *A, const float *Bp, long bst,
                        const float *Cp, long cst, float Dd, const float *dlast, float *dBp, float *dCp,
                        float *dA, float *du, float *ddelta, float *dz, float *dD, float *dbias) {
#define REVERSE(NV) reverse(L, NV, Np, dt, dsig, gate, zsig, zr, y, hs, as, u, dout, A, Bp, bst, Cp, cst, Dd, \
                            dlast, dBp, dCp, dA, du, ddelta, dz, dD, dbias)
    switch (nvec) {
    case 1: REVERSE(1); break;
    case 2: REVERSE(2); break;
    case 4: REVERSE(4); break;
    default: REVERSE(nvec); break;
    }
#undef REVERSE
}

void scan_bwd(const ScanArgs *a, long start, long end) {
    long L = a->seqlen, Np = a->nstate, nvec = Np / VW;
    float *work = (float *)malloc((5 * L + 2 * L * Np) * sizeof(float));
    float *dt = work, *dsig = work + L, *gate = work + 2 * L, *zsig = work + 3 * L, *y = work + 4 * L;
    float *hs = work + 5 * L, *as = hs + L * Np;
    for (long p = start; p < end; p++) {
        long b = p / a->dim, d = p % a->dim, off = p * L, bst, cst;
        const float *zr = a->z ? a->z + off : NULL;
        prepare_row(a->delta + off, a->delta_bias ? a->delta_bias[d] : 0.0f, a->softplus, zr, L, dt, dsig, gate,
                    zsig);
        const float *Bp = bc_rows(a->B, a->groups_b, b, d, a, &bst);
        const float *Cp = bc_rows(a->C, a->groups_c, b, d, a, &cst);
        float Dd = a->D ? a->D[d] : 0.0f;
        recur_any(L, nvec, Np, dt, a->u + off, a->A + d * Np, Bp, bst, Cp, cst, Dd, y, hs, as, NULL);
        float *dBp = (float *)bc_rows(a->dB, a->groups_b, b, d, a, &bst);
        float *dCp = (float *)bc_rows(a->dC, a->groups_c, b, d, a, &cst);
        reverse_any(L, nvec, Np, dt, a->softplus ? dsig : NULL, gate, zsig, zr, y, hs, as, a->u + off,
                    a->dout + off, a->A + d * Np, Bp, bst, Cp, cst, Dd, a->dlast ? a->dlast + p * Np : NULL, dBp,
                    dCp, a->dA + d * Np, a->du + off, a->ddelta + off, zr ? a->dz + off : NULL, a->dD + d,
                    a->ddelta_bias + d);
    }
    free(work);
}
"""

/* The cpu backend's selective_state_update: one decoding step of the selective scan, one (batch, channel) row of the
   state at a time: h = e^{dt A} h + dt B x over the row's N lanes, out = <h, C> + D x, times SiLU(z), with
   dt = softplus(dt + dt_bias) when asked. Layout: fp32 contiguous state (batch, dim, dstate), updated in place;
   x, dt, z, out (batch, dim); A (dim, dstate); B, C (batch, dstate); D, dt_bias (dim). Called through ctypes by
   state_update_cpu.py; one call processes rows [start, end). */
#include "kernel_args.h"
#include "vector_math.h"

/* D, z and dt_bias may be NULL */
#define STATE_UPDATE_ARGS(FIELD, S)                                                                                \
    FIELD(S, int64_t, dim) FIELD(S, int64_t, dstate) FIELD(S, int64_t, softplus)                                  \
    FIELD(S, float *, state) FIELD(S, const float *, x) FIELD(S, const float *, dt) FIELD(S, const float *, A)     \
    FIELD(S, const float *, B) FIELD(S, const float *, C) FIELD(S, const float *, D) FIELD(S, const float *, z)    \
    FIELD(S, const float *, dt_bias) FIELD(S, float *, out)
DECLARE_KERNEL_ARGS(StateUpdateArgs, STATE_UPDATE_ARGS)

int selective_state_update_step(const StateUpdateArgs *c, int64_t start, int64_t end) {
    long N = c->dstate;
    for (long r = start; r < end; r++) {
        long b = r / c->dim, d = r % c->dim;
        float step = c->dt[r] + (c->dt_bias ? c->dt_bias[d] : 0.0f);
        if (c->softplus) step = softplus_v(splat(step))[0];
        float x = c->x[r];
        float *h = c->state + r * N;
        const float *a = c->A + d * N, *Bv = c->B + b * N, *Cv = c->C + b * N;
        vf dt = splat(step), dt_x = splat(step * x), acc = splat(0.0f);
        long n = 0;
        for (; n + VW <= N; n += VW) {
            vf next = exp_v(dt * load(a + n)) * load(h + n) + dt_x * load(Bv + n);
            store(h + n, next);
            acc += next * load(Cv + n);
        }
        if (n < N) { /* the last N mod VW lanes */
            long k = N - n;
            vf next = exp_v(dt * load_part(a + n, k)) * load_part(h + n, k) + dt_x * load_part(Bv + n, k);
            store_part(h + n, next, k);
            acc += next * load_part(Cv + n, k);
        }
        float y = hsum(acc) + (c->D ? c->D[d] * x : 0.0f);
        if (c->z) y *= c->z[r] * sigmoid_v(splat(c->z[r]))[0];
        c->out[r] = y;
    }
    return LM_OK;
}

"""Direct, loop-by-loop formulas the kernel tests compare against (independent of the package's references)."""
import torch


def bc_at(M, b, d, t, dim):
    """Row of B or C used by channel d of batch b at time t, whatever its layout."""
    if M.dim() == 2:
        return M[d]
    if M.dim() == 3:
        return M[b, :, t]
    return M[b, d // (dim // M.shape[1]), :, t]


def direct_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan by explicit loops over batch, channel and time, in float64. Returns (out, last_state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, seqlen = u.shape
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    last = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for t in range(seqlen):
                dt = delta[b, d, t] + (0.0 if delta_bias is None else delta_bias[d].double())
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                h = torch.exp(dt * A[d]) * h + dt * bc_at(B, b, d, t, dim) * u[b, d, t]
                y = (h * bc_at(C, b, d, t, dim)).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t]
                if z is not None:
                    zz = z[b, d, t].double()
                    y = y * zz / (1 + torch.exp(-zz))
                out[b, d, t] = y
            last[b, d] = h
    return out, last


def direct_conv1d(x, weight, bias=None, silu=False):
    """Causal depthwise conv1d by explicit sums, float64: out[b, d, t] = bias[d] + sum_k w[d, k] x[b, d, t-W+1+k]."""
    x, weight = x.double(), weight.double()
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for t in range(seqlen):
        for k in range(width):
            s = t - width + 1 + k
            if s >= 0:
                out[:, :, t] += weight[:, k] * x[:, :, s]
    if bias is not None:
        out += bias.double()[:, None]
    return out * torch.sigmoid(out) if silu else out


def direct_inner_projections(xz, conv_w, conv_b, x_proj_w, dt_proj_w, dstate, B_proj_bias=None, C_proj_bias=None):
    """The scan inputs of the Mamba inner function, float64: u = SiLU(conv(x)), delta, B, C (Bt, N, L) and z."""
    dim = xz.shape[1] // 2
    rank = dt_proj_w.shape[1]
    x, z = xz[:, :dim].double(), xz[:, dim:].double()
    u = direct_conv1d(x, conv_w.reshape(dim, -1), conv_b, silu=True)
    x_dbl = torch.einsum("bel,re->brl", u, x_proj_w.double())  # (Bt, R + 2N, L)
    delta = torch.einsum("er,brl->bel", dt_proj_w.double(), x_dbl[:, :rank])
    Bm = x_dbl[:, rank:rank + dstate]
    Cm = x_dbl[:, rank + dstate:]
    if B_proj_bias is not None:
        Bm = Bm + B_proj_bias.double()[:, None]
    if C_proj_bias is not None:
        Cm = Cm + C_proj_bias.double()[:, None]
    return u, delta, Bm, Cm, z


def direct_inner_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias, B_proj_bias=None,
                             C_proj_bias=None):
    """Mamba inner function without out_proj, written step by step from the upstream description, float64; the
    optional (N,) biases are added to B and C."""
    u, delta, Bm, Cm, z = direct_inner_projections(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A.shape[1], B_proj_bias,
                                                   C_proj_bias)
    out, _ = direct_scan(u, delta, A, Bm, Cm, D, z, dt_bias, delta_softplus=True)
    return out


def direct_bimamba_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, A_b, D, dt_bias, B=None, C=None):
    """Vim's "v1" inner function before out_proj, float64: the scan over time with A, plus the scan run from the
    last step to the first with A_b (each output at its own step), on the same conv and projections. B and C, given
    or projected, are reversed along their last axis for the second scan, as Vim does (for a constant (E, N) one,
    its states)."""
    u, delta, Bm, Cm, z = direct_inner_projections(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A.shape[1])
    Bm, Cm = (Bm if B is None else B), (Cm if C is None else C)
    forward, _ = direct_scan(u, delta, A, Bm, Cm, D, z, dt_bias, delta_softplus=True)
    steps_back = torch.arange(u.shape[-1] - 1, -1, -1)
    backward, _ = direct_scan(u[..., steps_back], delta[..., steps_back], A_b, Bm.flip(-1), Cm.flip(-1), D,
                              z[..., steps_back], dt_bias, delta_softplus=True)
    return forward + backward[..., steps_back]


def direct_rms_norm(x, weight, bias, eps):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()
    return y if bias is None else y + bias.double()


def direct_layer_norm(x, weight, bias, eps):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.double()
    return y if bias is None else y + bias.double()

"""The selective-scan initial values both families share, against Mamba's rules written out by hand."""
import math

import torch
import torch.nn.functional as F

from classification.models.ssm_init import a_log_init, dt_bias_init, dt_rank_of, dt_weight_init


def test_dt_bias_gives_a_log_uniform_dt_clamped_at_the_floor():
    """softplus(bias) = dt with log(dt) uniform on [log 1e-3, log 0.1] (Mamba's dt init, kept by LocalVMamba): half of
    the dt fall below the geometric middle 0.01 and a quarter below 10 ** -2.5; a dt uniform on [1e-3, 0.1] (the
    range checks of the model tests cannot tell) puts 9% below 0.01. Draws under dt_init_floor are raised to it."""
    torch.manual_seed(0)
    dt = F.softplus(dt_bias_init((200_000,), 1e-3, 0.1, 1e-4))
    assert 1e-3 * (1 - 1e-5) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-5)
    assert abs((dt < 0.01).float().mean().item() - 0.5) < 0.01
    assert abs((dt < 10 ** -2.5).float().mean().item() - 0.25) < 0.01
    torch.manual_seed(0)
    floored = F.softplus(dt_bias_init((200_000,), 1e-6, 1e-2, 1e-4))
    # log-uniform on [1e-6, 1e-2]: P(dt < 1e-4) = 2 / 4, and all of those become exactly the floor
    assert abs((floored < 1e-4 * (1 + 1e-4)).float().mean().item() - 0.5) < 0.01
    assert math.isclose(floored.min().item(), 1e-4, rel_tol=1e-4)


def test_a_log_rows_dt_rank_and_dt_weight_bound():
    """A_log: log(1..N) in each of copies * channels rows; dt rank ceil(d_model / 16) for 'auto'; dt weights
    U(-s, s) with s = dt_scale / sqrt(rank)."""
    assert torch.equal(a_log_init(3, 4, copies=2), torch.log(torch.arange(1.0, 5.0)).expand(6, 4))
    assert [dt_rank_of(d) for d in (16, 17, 192)] == [1, 2, 12] and dt_rank_of(17, 5) == 5
    torch.manual_seed(0)
    weight = torch.empty(100_000, 4)
    dt_weight_init(weight, 4, dt_scale=2.0)                     # s = 2 / sqrt(4) = 1
    assert weight.abs().max() <= 1.0 and weight.abs().max() > 0.999

"""The selective-scan initial values both families share, against Mamba's rules written out by hand."""
import math

import torch
import torch.nn.functional as F

from classification.models.ssm_init import dt_bias_init


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

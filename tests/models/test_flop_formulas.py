"""The FLOP formulas of classification.models.flop_count that its fvcore handles charge: the original's selective scan
count and the causal conv that fvcore traces."""
import torch

from classification.models.flop_count import scan_flop_handle, selective_scan_flops, traced_causal_conv1d
from localmamba_conv1d import causal_conv1d_ref


def test_selective_scan_count_is_the_originals():
    """9 B L D N, plus B D L for each of D and a z gate."""
    assert selective_scan_flops(2, 3, 4, 5, with_d=False) == 9 * 2 * 3 * 4 * 5
    assert selective_scan_flops(2, 3, 4, 5) == 9 * 2 * 3 * 4 * 5 + 2 * 4 * 3
    assert selective_scan_flops(2, 3, 4, 5, with_d=True, with_z=True) == 9 * 2 * 3 * 4 * 5 + 2 * 2 * 4 * 3


def test_traced_conv_is_the_causal_conv_with_either_name_of_its_activation():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 9, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    for activation in (None, 'silu', 'swish'):
        torch.testing.assert_close(traced_causal_conv1d(x, w, b, activation),
                                   causal_conv1d_ref(x, w, b, activation), rtol=1e-5, atol=1e-5)


class TracedValue:
    """What fvcore hands a handle for one input: a value whose ``type().sizes()`` is its shape."""

    def __init__(self, *sizes):
        self.shape = list(sizes)

    def type(self):
        return self

    def sizes(self):
        return self.shape


def test_scan_handle_reads_the_sizes_and_charges_d_only_when_present():
    """Inputs (u, delta, A, B, C, D, z, delta_bias); an absent D is an empty tensor; B and C are per time step."""
    u, A, BC = TracedValue(2, 4, 3), TracedValue(4, 5), TracedValue(2, 1, 5, 3)
    for D, with_d in ((TracedValue(4), True), (TracedValue(0), False)):
        inputs = [u, u, A, BC, BC, D, u, TracedValue(4)]
        assert scan_flop_handle(inputs, []) == selective_scan_flops(2, 3, 4, 5, with_d=with_d)

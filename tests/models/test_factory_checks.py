"""Argument checks of classification.models.factory that every registered model goes through: features_only's
out_indices."""
import pytest

from classification.models.factory import checked_out_indices


def test_out_indices_are_sorted_and_counted_from_the_end_when_negative():
    assert checked_out_indices('m', (3, -4, 1), 4, 'stage') == [0, 1, 3]
    assert checked_out_indices('m', [-1], 4, 'stage') == [3]


@pytest.mark.parametrize('out_indices, message', [
    ((0, 4), r"^m: out_indices \(0, 4\): \[4\] out of range for its 4 stages \(0 to 3, or -1 to -4 from the end\)$"),
    ((-5,), r"^m: out_indices \(-5,\): \[-5\] out of range for its 4 stages"),
    ((1, -3), r"^m: out_indices \(1, -3\) names a stage twice$"),
    ((), r"^m: out_indices is empty: name at least one of its 4 stages$"),
])
def test_out_indices_out_of_range_repeated_or_none_are_refused(out_indices, message):
    with pytest.raises(ValueError, match=message):
        checked_out_indices('m', out_indices, 4, 'stage')

"""One mean ± std for every table: against NumPy's own mean and sample std (ddof=1)."""

import numpy as np
import pytest

from medpeft.stats import format_mean_std, mean_std


def test_mean_std_is_numpys_mean_and_sample_std_of_the_numbers_given():
    values = [0.61, 0.72, 0.655, 0.7]
    assert mean_std(values) == (pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
    mean, std = mean_std([1.0, None, 2.0, float("nan"), 4.0])  # None and nan are no run
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(
        ((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2**0.5
    )
    assert mean_std(iter([3.0, 5.0])) == (4.0, pytest.approx(2**0.5))


def test_mean_std_of_equal_values_is_exactly_zero_of_one_value_nan():
    assert np.std([0.8978632478632478] * 5, ddof=1) > 0  # numpy's two-pass std around its rounded mean: ~1e-16
    assert mean_std([0.8978632478632478] * 5) == (pytest.approx(0.8978632478632478), 0.0)
    assert mean_std([3.0])[0] == 3.0 and np.isnan(mean_std([3.0])[1])
    assert all(np.isnan(mean_std([None]))) and all(np.isnan(mean_std([])))


def test_format_mean_std():
    assert format_mean_std(0.8125, 0.0375, ".1f", 100) == "81.2 ± 3.8"
    assert format_mean_std(0.8125, float("nan"), ".2f", 100) == "81.25"
    assert format_mean_std(1234.5, None, ".3g") == "1.23e+03"
    assert format_mean_std(float("nan"), float("nan")) == format_mean_std(None, None) == "–"

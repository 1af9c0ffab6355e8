"""theory.analysis.fits.loglog_fit against closed forms and NumPy's polyfit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theory.analysis.fits import loglog_fit


def test_exact_power_law_has_zero_spread():
    x = np.array([1e-2, 3e-3, 1e-3, 3e-4])
    fit = loglog_fit(x, 3.0 * x**0.5)
    assert fit.slope == pytest.approx(0.5, abs=1e-12)
    assert math.exp(fit.intercept) == pytest.approx(3.0, rel=1e-12)
    assert fit.stderr < 1e-12
    assert fit.local == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)


def test_matches_polyfit_and_the_textbook_standard_error():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e-4, 1e-1, 7)
    y = 2.0 * x**1.3 * np.exp(0.2 * rng.standard_normal(x.size))
    fit = loglog_fit(x, y)
    (p, c), cov = np.polyfit(np.log(x), np.log(y), 1, cov="unscaled")
    resid = np.log(y) - (p * np.log(x) + c)
    se = np.sqrt(cov[0, 0] * np.sum(resid**2) / (x.size - 2))
    assert fit.slope == pytest.approx(p, rel=1e-10)
    assert fit.intercept == pytest.approx(c, rel=1e-10)
    assert fit.stderr == pytest.approx(se, rel=1e-8)
    assert fit.stderr > 0.01  # the scatter shows in the spread


def test_missing_or_degenerate_points_give_nan():
    assert math.isnan(loglog_fit([1e-2, 1e-3], [1.0, None]).slope)
    assert math.isnan(loglog_fit([1e-2, 1e-3], [1.0, 0.0]).slope)
    assert math.isnan(loglog_fit([1e-2, 1e-2], [1.0, 0.5]).slope)
    assert math.isnan(loglog_fit([1e-2], [1.0]).slope)
    two = loglog_fit([1e-2, 1e-3], [1.0, 0.1])
    assert two.slope == pytest.approx(1.0) and math.isnan(two.stderr)


def test_bad_x_is_refused():
    with pytest.raises(ValueError, match="x must be finite and positive"):
        loglog_fit([0.0, 1e-3], [1.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        loglog_fit([1e-2, 1e-3], [1.0])

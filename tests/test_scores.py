"""The one probability and the one label rule (fracture.scores), against a plain sigmoid."""

import warnings

import numpy as np
import pytest

from fracture.scores import is_abnormal, label, probability


def test_probability_matches_a_plain_sigmoid_without_overflow_warnings():
    moderate = np.linspace(-30, 30, 121)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any overflow or invalid-value warning fails the test
        np.testing.assert_allclose(probability(moderate), 1 / (1 + np.exp(-moderate)), rtol=1e-12, atol=0)
        extreme = probability(np.array([-1e6, -800.0, 800.0, 1e6], np.float32))
        assert probability(0.0) == 0.5 and isinstance(probability(0.0), float)
    np.testing.assert_array_equal(extreme, [0.0, 0.0, 1.0, 1.0])
    # Far below zero the plain form still works in float64 until exp(-x) overflows: agree there too.
    np.testing.assert_allclose(probability(-700.0), 1 / (1 + np.exp(700.0)), rtol=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_label_is_abnormal_strictly_above_the_threshold(threshold):
    below, at, above = np.nextafter(threshold, 0), threshold, np.nextafter(threshold, 1)
    assert [label(p, threshold) for p in (below, at, above)] == ["normal", "normal", "abnormal"]
    assert isinstance(label(at, threshold), str)
    np.testing.assert_array_equal(label(np.array([below, at, above]), threshold), ["normal", "normal", "abnormal"])
    np.testing.assert_array_equal(is_abnormal(np.array([below, at, above]), threshold), [False, False, True])
    assert label(np.nan, threshold) == "normal"  # an unreadable image is never called abnormal


@pytest.mark.parametrize("p, threshold, expected", [
    (0.497, 0.5, ("normal", True, "uncertain, leans normal")),
    (0.53, 0.5, ("abnormal", True, "uncertain, leans abnormal")),
    (0.05, 0.5, ("normal", False, "normal")),
    (0.92, 0.5, ("abnormal", False, "abnormal")),
    (0.56, 0.5, ("abnormal", False, "abnormal")),  # outside the 0.05 band
    (0.22, 0.2, ("abnormal", True, "uncertain, leans abnormal")),  # the band follows the threshold
])
def test_verdict_flags_probabilities_near_the_threshold(p, threshold, expected):
    from fracture.scores import verdict

    result = verdict(p, threshold, band=0.05)
    assert (result.label, result.uncertain, result.text) == expected
    assert result.label == label(p, threshold)  # the same decision rule, only qualified

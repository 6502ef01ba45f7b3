"""Unbiased pass@k against exact binomials (math.comb with integers) and hand cases."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.eval.passk import default_ks, pass_at_k, pass_at_k_curve


def exact(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_hand_cases():
    assert pass_at_k(2, [1], 1)[0] == pytest.approx(0.5)
    assert pass_at_k(4, [1], 2)[0] == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, [2], 2)[0] == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, [0], 5)[0] == 0.0  # c = 0: never
    assert pass_at_k(10, [10], 5)[0] == 1.0  # c = n: always
    assert pass_at_k(10, [1], 10)[0] == 1.0  # k = n with one correct: the full set holds it
    assert pass_at_k(10, [0], 10)[0] == 0.0
    assert pass_at_k(10, [4], 7)[0] == 1.0  # k > n - c: every k-subset holds a correct one
    assert pass_at_k(10, [3], 7)[0] == pytest.approx(1 - 1 / math.comb(10, 7))  # k = n - c


def test_pass_at_1_is_the_fraction_correct():
    c = np.array([0, 3, 7, 16])
    np.testing.assert_allclose(pass_at_k(16, c, 1), c / 16)


def test_vectorised_over_problems_with_their_own_n():
    n, c = [4, 10, 1024, 7], [1, 0, 5, 7]
    got = pass_at_k(n, c, 3)
    np.testing.assert_allclose(got, [exact(a, b, 3) for a, b in zip(n, c, strict=True)], rtol=1e-12, atol=1e-15)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1024).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_matches_exact_binomials(nck):
    n, c, k = nck
    assert pass_at_k(n, [c], k)[0] == pytest.approx(exact(n, c, k), rel=1e-10, abs=1e-12)


def test_n_1024_extremes_against_exact():
    for c, k in [(1, 1), (1, 512), (3, 512), (1, 1024), (100, 2), (1000, 16), (24, 1000)]:
        assert pass_at_k(1024, [c], k)[0] == pytest.approx(exact(1024, c, k), rel=1e-10, abs=1e-12)


def test_default_ks():
    assert default_ks(0) == []
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(10) == [1, 2, 4, 8, 10]
    assert default_ks(1024)[-1] == 1024 and len(default_ks(1024)) == 11


def test_curve_is_the_mean_over_problems():
    curve = pass_at_k_curve(4, [0, 1, 4])
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert curve[2] == pytest.approx((0 + 0.5 + 1) / 3)
    assert curve[4] == pytest.approx((0 + 1 + 1) / 3)
    assert math.isnan(pass_at_k_curve(4, [], ks=[1])[1])


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(4, [1], 0)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(4, [5], 1)
    with pytest.raises(ValueError, match="at least k"):
        pass_at_k(4, [1], 8)

"""OpenMax: the Weibull fit against an independent solution of the likelihood equations, the
libMR FitHigh translation, MAV/tail selection and a recalibration worked by hand."""
from __future__ import annotations

import math

import numpy as np

from facelt.openset.openmax import OpenMax, WeibullTails, distances, fit_high, weibull_fit


def _mle_by_bisection(x: list[float]) -> tuple[float, float]:
    """Independent solve of sum x^k ln x / sum x^k - 1/k = mean ln x, by plain bisection on
    x / max(x) (the shape equation is scale-free; the scale scales back)."""
    top = max(x)
    r = [v / top for v in x]

    def g(k: float) -> float:
        num = sum(v ** k * math.log(v) for v in r)
        den = sum(v ** k for v in r)
        return num / den - 1.0 / k - sum(math.log(v) for v in r) / len(r)
    lo, hi = 1e-3, 1e8
    for _ in range(300):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    k = math.sqrt(lo * hi)
    return k, top * (sum(v ** k for v in r) / len(r)) ** (1.0 / k)


def test_weibull_mle_matches_the_likelihood_equations():
    k, lam = weibull_fit(np.array([1.0, 2.0, 3.0]))
    k_ref, lam_ref = _mle_by_bisection([1.0, 2.0, 3.0])
    assert abs(k - k_ref) < 1e-6 * k_ref and abs(lam - lam_ref) < 1e-6 * lam_ref


def test_weibull_mle_recovers_known_parameters():
    x = 3.0 * np.random.default_rng(0).weibull(2.5, size=20000)
    k, lam = weibull_fit(x)
    assert abs(k - 2.5) < 0.08 and abs(lam - 3.0) < 0.05


def test_fit_high_translation_and_cdf_by_hand():
    # tail [5, 4, 3]: small_score 3, translate 1 -> fitted data [3, 2, 1]
    model = fit_high(np.array([[5.0, 4.0, 3.0]]), np.ones((1, 3), bool), translate=1.0)
    k, lam = _mle_by_bisection([3.0, 2.0, 1.0])
    assert abs(model.shape[0] - k) < 1e-6 * k and abs(model.scale[0] - lam) < 1e-6 * lam
    assert model.small_score[0] == 3.0
    # W-score of distance 4: CDF(4 + 1 - 3) = 1 - exp(-(2 / lam)^k)
    expected = 1.0 - math.exp(-((2.0 / lam) ** k))
    assert abs(model.cdf(np.array([4.0]), np.array([0]))[0] - expected) < 1e-9
    # below the translated origin the W-score is 0
    assert model.cdf(np.array([1.0]), np.array([0]))[0] == 0.0


def test_libmr_default_translation_is_well_conditioned():
    # translate 10000 squeezes the data near 1e4: the fit still reproduces the bisection result
    d = np.array([0.3, 0.5, 0.9, 1.4])
    model = fit_high(d[None, ::-1].copy(), np.ones((1, 4), bool), translate=10000.0)
    k, lam = _mle_by_bisection(list(d + 10000.0 - 0.3))
    assert abs(model.shape[0] - k) < 1e-4 * k and abs(model.scale[0] - lam) < 1e-9 * lam


def test_eucos_distance_by_hand():
    d = distances(np.array([1.0, 0.0]), np.array([0.0, 1.0]), "eucos")
    assert abs(float(d) - (math.sqrt(2.0) / 200.0 + 1.0)) < 1e-12


def test_fit_uses_correct_samples_and_the_largest_distances():
    # class 0 AVs 0, 1, 2, 10 classified correctly, 100 misclassified (left out): MAV 13/4
    av = np.array([[0.0], [1.0], [2.0], [10.0], [100.0], [50.0], [52.0], [54.0]])
    pred = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    om = OpenMax(tailsize=2, alpha_rank=1, distance="euclidean", translate=1.0)
    om.fit_arrays(av, pred, labels, num_classes=2, rows=3)
    assert np.allclose(om.mav[:, 0], [3.25, 52.0])
    # distances of class 0: 3.25, 2.25, 1.25, 6.75 -> tail (2 largest) 6.75, 3.25
    assert om.weibull.small_score[0] == 3.25
    k, lam = _mle_by_bisection([6.75 + 1.0 - 3.25, 1.0])
    assert abs(om.weibull.shape[0] - k) < 1e-6 * k
    # class 1: distances 2, 0, 2 -> tail 2, 2 has no spread: no Weibull, not recalibrated
    assert om.unfitted == 1 and not om.weibull.valid[1]
    assert om.weibull.cdf(np.array([5.0]), np.array([1]))[0] == 0.0


def test_recalibration_by_hand():
    om = OpenMax(tailsize=2, alpha_rank=2, distance="euclidean")
    om.mav = np.array([[3.0, 1.0, 1.0], [3.0, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    # W-score = 1 - exp(-d): shape 1, scale 1, no translation
    om.weibull = WeibullTails(np.ones(3), np.ones(3), np.zeros(3), np.ones(3, bool), 0.0)
    logits = np.array([[3.0, 1.0, 0.0]])
    # top-2: class 0 (d = 1), class 1 (d = 2); rank weights (2-0)/2 = 1, (2-1)/2 = 1/2
    w0, w1 = 1.0 - math.exp(-1.0), 1.0 - math.exp(-2.0)
    om0, om1 = 1.0 - w0, 1.0 - 0.5 * w1
    v = [3.0 * om0, 1.0 * om1, 0.0]
    unknown = 3.0 * (1 - om0) + 1.0 * (1 - om1)
    z = np.exp(np.array(v + [unknown]))
    expected = z / z.sum()
    p = om.probabilities(logits, logits)
    assert np.allclose(p[0], expected)
    pred, best, score = om.predict(logits, logits, threshold=0.1)
    assert pred[0] == -1 and best[0] == 0          # the unknown class wins
    assert abs(score[0] - (expected[0] - 1.0)) < 1e-12

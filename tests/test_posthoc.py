"""Post-hoc steps and open-set scores against hand-worked values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.errors import ConfigError
from facelt.openset.posthoc import (energy, logit_adjust, max_logit, msp, select_tau, softmax,
                            tau_normalize)


def test_tau_zero_leaves_the_classifier_unchanged():
    w = torch.tensor([[3.0, 4.0], [0.5, -1.0], [0.0, 0.0]])
    assert torch.equal(tau_normalize(w, 0.0), w)


def test_tau_normalize_by_hand():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # norms 5 and 2; tau 1 -> unit rows, tau 0.5 -> divided by sqrt(norm)
    assert torch.allclose(tau_normalize(w, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    half = tau_normalize(w, 0.5)
    assert torch.allclose(half, torch.tensor([[3 / math.sqrt(5), 4 / math.sqrt(5)],
                                              [0.0, 2 / math.sqrt(2)]]))


def test_select_tau_takes_the_best_and_the_first_of_ties():
    scores = {0.0: 0.5, 0.5: 0.7, 1.0: 0.7}
    best, sweep = select_tau(lambda t: scores[t], [0.0, 0.5, 1.0])
    assert best == 0.5
    assert [r["score"] for r in sweep] == [0.5, 0.7, 0.7]
    with pytest.raises(ConfigError):
        select_tau(lambda t: 0.0, [])


def test_logit_adjust_post_hoc_shift_by_hand():
    # counts 1 and 3: prior 1/4, 3/4; logits - tau log prior
    out = logit_adjust(np.array([[0.0, 0.0]]), [1, 3], tau=1.0)
    assert np.allclose(out, [[math.log(4.0), -math.log(0.75)]])
    # a head-class win flips to the tail class: [0.5 + ln 4, 1 - ln(3/4)] = [1.886, 1.288]
    flipped = logit_adjust(np.array([[0.5, 1.0]]), [1, 3], tau=1.0)
    assert flipped.argmax() == 0
    assert np.allclose(logit_adjust(np.array([[0.5, 1.0]]), [1, 3], tau=0.0), [[0.5, 1.0]])


def test_msp_energy_max_logit_by_hand():
    lg = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    assert np.allclose(msp(lg), [0.75, 0.5])
    assert np.allclose(energy(lg), [math.log(4.0), 1000.0 + math.log(2.0)])
    assert np.allclose(energy(lg[:1], T=2.0), [2.0 * math.log(1.0 + math.sqrt(3.0))])
    assert np.allclose(max_logit(lg), [math.log(3.0), 1000.0])
    assert np.allclose(softmax(lg).sum(1), 1.0)

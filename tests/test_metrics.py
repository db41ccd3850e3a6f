"""Continual-learning metrics against matrices computed by hand."""

import pytest

from sdft.metrics import (
    all_metrics,
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    general_delta,
    mean_ci95,
)

# Rows: base, after stage 1, after stage 2, after stage 3. Columns: tasks 1..3.
FORGETFUL = [
    [0.10, 0.20, 0.30],
    [0.80, 0.25, 0.30],
    [0.50, 0.90, 0.35],
    [0.40, 0.60, 0.70],
]
# By hand:
# ACC = (0.40 + 0.60 + 0.70) / 3 = 0.5666...
# BWT = ((0.40 - 0.80) + (0.60 - 0.90)) / 2 = (-0.40 - 0.30) / 2 = -0.35
# FWT = ((R[1][2] - R[0][2]) + (R[2][3] - R[0][3])) / 2 = ((0.25 - 0.20) + (0.35 - 0.30)) / 2 = 0.05
# F_1 = max(0.80, 0.50) - 0.40 = 0.40; F_2 = max(0.90) - 0.60 = 0.30; forgetting = 0.35

ACCUMULATING = [
    [0.10, 0.10],
    [0.70, 0.40],
    [0.80, 0.90],
]
# ACC = 0.85; BWT = 0.80 - 0.70 = +0.10; FWT = 0.40 - 0.10 = +0.30; F_1 = 0.70 - 0.80 = -0.10


def test_forgetful_matrix_by_hand():
    assert average_accuracy(FORGETFUL) == pytest.approx(1.7 / 3)
    assert backward_transfer(FORGETFUL) == pytest.approx(-0.35)
    assert forward_transfer(FORGETFUL) == pytest.approx(0.05)
    assert forgetting_per_task(FORGETFUL) == pytest.approx([0.40, 0.30])
    assert forgetting(FORGETFUL) == pytest.approx(0.35)


def test_accumulating_matrix_has_positive_bwt_and_fwt():
    metrics = all_metrics(ACCUMULATING, [0.9, 0.85, 0.8])
    assert metrics == pytest.approx({"acc": 0.85, "bwt": 0.10, "fwt": 0.30, "forgetting": -0.10, "general_delta": -0.10})


def test_single_task_has_no_transfer():
    matrix = [[0.2], [0.9]]
    assert average_accuracy(matrix) == 0.9
    assert backward_transfer(matrix) is None and forward_transfer(matrix) is None and forgetting(matrix) is None


def test_bad_shapes_and_missing_general():
    with pytest.raises(ValueError, match="T\\+1 rows"):
        average_accuracy([[0.1, 0.2], [0.3, 0.4]])
    assert general_delta([None, 0.5]) is None and general_delta([0.5]) is None


def test_mean_ci95_by_hand():
    mean, half = mean_ci95([0.5, 0.7, 0.9])
    # sd = 0.2, t(2 dof) = 4.303, half = 4.303 * 0.2 / sqrt(3) = 0.49687
    assert mean == pytest.approx(0.7) and half == pytest.approx(0.49687, abs=1e-4)
    assert mean_ci95([0.4]) == (0.4, None)


def test_pass_at_k_by_hand():
    from sdft.metrics import mean_pass_at_k, pass_at_k

    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 include one of the 2 correct
    # problems with c = 0, 1, 4 of n = 4 at k = 2: (0 + (1 - 3/6) + 1) / 3 = 0.5
    assert mean_pass_at_k([0, 1, 4], n=4, k=2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)

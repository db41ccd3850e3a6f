"""Continual-learning metrics on an accuracy matrix R: pure functions, no I/O.

R has T+1 rows and T columns: row 0 is the model before any training, row i the model after training
stage i, column j task j (every cell filled, also for tasks not trained yet). In the formulas below tasks
and stages are numbered from 1 as in the literature; row 0 is the base model.

  ACC  = mean_j R[T][j]                                   accuracy on every task after the last stage
  BWT  = mean_{j<T} (R[T][j] - R[j][j])                   backward transfer; negative = forgetting
  FWT  = mean_{j>1} (R[j-1][j] - R[0][j])                 forward transfer: earlier stages helping later tasks
  F_j  = max_{j<=i<T} R[i][j] - R[T][j]  (j < T)          forgetting of task j (Chaudhry et al. 2018:
                                                          max-minus-last; Avalanche uses first-minus-last)
  forgetting = mean_{j<T} F_j
  general delta = G[T] - G[0]                             change of the general-capability score

All are unnormalised differences of accuracies in [0, 1]; BWT, FWT and forgetting average over T-1 tasks.
"""

from __future__ import annotations

import math
from statistics import mean, stdev

DEFINITIONS = {
    "acc": "ACC = mean_j R[T][j]: accuracy on every task after the last stage",
    "bwt": "BWT = mean_{j<T} (R[T][j] - R[j][j]): backward transfer over the T-1 earlier tasks; negative = forgetting",
    "fwt": "FWT = mean_{j>1} (R[j-1][j] - R[0][j]): forward transfer; positive = earlier stages helped a task before it was trained",
    "forgetting": "F = mean_{j<T} (max_{j<=i<T} R[i][j] - R[T][j]): max-minus-last forgetting (Chaudhry et al.)",
    "general_delta": "general delta = G[T] - G[0]: change of the general-capability (prior-skill) score",
}


def _check(matrix: list[list[float]]) -> int:
    tasks = len(matrix[0]) if matrix else 0
    if tasks == 0 or len(matrix) != tasks + 1 or any(len(row) != tasks for row in matrix):
        raise ValueError(f"the accuracy matrix must have T+1 rows of T columns, got {[len(r) for r in matrix]}")
    return tasks


def average_accuracy(matrix: list[list[float]]) -> float:
    tasks = _check(matrix)
    return mean(matrix[tasks])


def backward_transfer(matrix: list[list[float]]) -> float | None:
    """None for a single task (no earlier task to look back on)."""
    tasks = _check(matrix)
    if tasks < 2:
        return None
    return mean(matrix[tasks][j] - matrix[j + 1][j] for j in range(tasks - 1))


def forward_transfer(matrix: list[list[float]]) -> float | None:
    """None for a single task (no later task to look forward to)."""
    tasks = _check(matrix)
    if tasks < 2:
        return None
    return mean(matrix[j][j] - matrix[0][j] for j in range(1, tasks))


def forgetting_per_task(matrix: list[list[float]]) -> list[float]:
    """F_j for the T-1 tasks trained before the last stage: best accuracy from the stage that trained it
    up to stage T-1, minus the final accuracy."""
    tasks = _check(matrix)
    return [max(matrix[i][j] for i in range(j + 1, tasks)) - matrix[tasks][j] for j in range(tasks - 1)]


def forgetting(matrix: list[list[float]]) -> float | None:
    per_task = forgetting_per_task(matrix)
    return mean(per_task) if per_task else None


def general_delta(general: list[float | None]) -> float | None:
    if len(general) < 2 or general[0] is None or general[-1] is None:
        return None
    return general[-1] - general[0]


def all_metrics(matrix: list[list[float]], general: list[float | None]) -> dict[str, float | None]:
    return {
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix),
        "forgetting": forgetting(matrix),
        "general_delta": general_delta(general),
    }


# Two-sided 95% Student-t quantiles for n-1 degrees of freedom (n = number of seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student t); None for one value."""
    if len(values) < 2:
        return values[0], None
    quantile = _T95.get(len(values) - 1, 1.96)
    return mean(values), quantile * stdev(values) / math.sqrt(len(values))


def mean_ci95_of_present(values: list) -> tuple[float | None, float | None]:
    """mean_ci95 over the values that are not None; (None, None) when none is (a metric some seeds lack)."""
    values = [v for v in values if v is not None]
    return mean_ci95(values) if values else (None, None)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement include a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(correct_counts: list[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with n samples."""
    return mean(pass_at_k(n, c, k) for c in correct_counts)

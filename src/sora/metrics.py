"""GLUE metrics from a classifier's outputs: the names and definitions of the GLUE benchmark.

An undefined metric is reported as 0.0, never NaN: a correlation (pearson, spearmanr) when the predictions or the
labels are constant, and any metric that comes out NaN (e.g. from NaN predictions). ``matthews_correlation`` of
constant predictions is 0.0 too (scikit-learn's convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .data import TASKS, TaskSpec
from .errors import SoraError

# The trainer evaluates MNLI's two validation splits separately; the mismatched one's keys get this suffix.
_SPLIT_SUFFIX = {"validation_mismatched": "_mm"}


def _correlation(fn: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return fn(predictions, labels)[0]


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p, pos_label=1, zero_division=0),
    "f1_macro": lambda p, y: f1_score(y, p, average="macro", zero_division=0),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": partial(_correlation, pearsonr),
    "spearmanr": partial(_correlation, spearmanr),
}


def metric_key(name: str, split: str = "validation") -> str:
    """The key a metric has for a validation split: ``accuracy`` -> ``accuracy_mm`` on MNLI mismatched."""
    return name + _SPLIT_SUFFIX.get(split, "")


def compute_metrics(
    task_or_spec: str | TaskSpec, predictions: np.ndarray, labels: np.ndarray, *, split: str = "validation"
) -> dict[str, float]:
    """The task's metrics (``spec.metric_names``) as plain floats, keyed by ``metric_key(name, split)``.

    ``predictions`` are logits (N, num_labels) for classification (argmax is the class), or scores (N,) or (N, 1)
    for regression; ``labels`` are (N,) class ids or scores. For a custom task pass ``TaskData.spec``.
    """
    if isinstance(task_or_spec, TaskSpec):
        spec = task_or_spec
    elif task_or_spec in TASKS:
        spec = TASKS[task_or_spec]
    else:
        raise SoraError(f"unknown task {task_or_spec!r}; known tasks: {', '.join(TASKS)} (custom: pass its spec)")
    predictions, labels = np.asarray(predictions), np.asarray(labels).reshape(-1)
    n = len(labels)
    allowed = [(n,), (n, 1)] if spec.is_regression else [(n, spec.num_labels)]
    if predictions.shape not in allowed:
        expected = " or ".join(map(str, allowed))
        raise SoraError(f"{spec.name}: predictions have shape {predictions.shape}, expected {expected}")
    if not n:
        raise SoraError(f"{spec.name}: no predictions to score")
    predictions = predictions.reshape(-1) if spec.is_regression else predictions.argmax(axis=-1)
    scores = {metric_key(name, split): float(_METRICS[name](predictions, labels)) for name in spec.metric_names}
    return {key: 0.0 if math.isnan(value) else value for key, value in scores.items()}

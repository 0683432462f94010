"""sora.metrics: GLUE metrics against hand-computed values, and the degenerate cases that must not crash."""

from __future__ import annotations

import numpy as np
import pytest

from sora.data import TaskSpec
from sora.errors import SoraError
from sora.metrics import compute_metrics, metric_key

# 6 binary examples: TP=2, FP=1, FN=1, TN=2, so accuracy 4/6, precision = recall = F1 = 2/3,
# MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 3/9.
LABELS = np.array([1, 0, 1, 1, 0, 0])
LOGITS = np.array([[0.1, 0.9], [0.2, 0.8], [-1.0, 2.0], [3.0, 0.0], [0.7, 0.3], [5.0, -5.0]])


def one_hot(classes: list[int], n: int) -> np.ndarray:
    return np.eye(n)[classes]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("mrpc", {"accuracy": 4 / 6, "f1": 2 / 3}),
        ("qqp", {"accuracy": 4 / 6, "f1": 2 / 3}),
        ("cola", {"matthews_correlation": 1 / 3}),
        *((task, {"accuracy": 4 / 6}) for task in ("sst2", "qnli", "rte", "wnli")),
    ],
)
def test_binary_tasks(task, expected):
    metrics = compute_metrics(task, LOGITS, LABELS)
    assert metrics == pytest.approx(expected)
    assert all(type(v) is float for v in metrics.values())


def test_stsb_correlations():
    # deviations from the means (2, 2): (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 * 2); ranks equal the values.
    expected = {"pearson": 0.5, "spearmanr": 0.5}
    assert compute_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(expected)
    assert compute_metrics("stsb", np.array([[1.0], [2.0], [3.0]]), [1.0, 3.0, 2.0]) == pytest.approx(expected)
    # monotone but not linear: spearman 1, pearson below 1
    metrics = compute_metrics("stsb", np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 10.0]))
    assert metrics["spearmanr"] == pytest.approx(1.0) and 0.8 < metrics["pearson"] < 1.0


def test_mnli_matched_and_mismatched_keys():
    logits, labels = one_hot([0, 1, 2, 2], 3), np.array([0, 1, 2, 0])
    assert compute_metrics("mnli", logits, labels, split="validation_matched") == {"accuracy": 0.75}
    assert compute_metrics("mnli", logits, labels, split="validation_mismatched") == {"accuracy_mm": 0.75}
    assert metric_key("accuracy", "validation_mismatched") == "accuracy_mm"
    assert metric_key("pearson") == "pearson"


def test_custom_specs():
    classes = TaskSpec("custom", ("text",), "label", ("a", "b", "c"), ("accuracy", "f1_macro"))
    # per-class F1: class 0: 1, class 1 (never predicted): 0, class 2: P 2/3, R 1 -> 0.8; macro = 1.8 / 3
    metrics = compute_metrics(classes, one_hot([0, 2, 2, 2], 3), np.array([0, 1, 2, 2]))
    assert metrics == pytest.approx({"accuracy": 0.75, "f1_macro": 0.6})
    scores = TaskSpec("custom", ("text",), "label", None, ("pearson", "spearmanr"))
    assert compute_metrics(scores, np.array([3.0, 1.0, 2.0]), np.array([3.0, 1.0, 2.0])) == pytest.approx(
        {"pearson": 1.0, "spearmanr": 1.0}
    )


@pytest.mark.filterwarnings("error")
def test_degenerate_cases_give_zero_without_warnings():
    constant = np.tile([2.0, -1.0], (4, 1))  # always class 0
    assert compute_metrics("cola", constant, np.array([0, 1, 1, 0])) == {"matthews_correlation": 0.0}
    assert compute_metrics("mrpc", constant, np.array([0, 1, 1, 0])) == {"accuracy": 0.5, "f1": 0.0}
    zero = {"pearson": 0.0, "spearmanr": 0.0}
    assert compute_metrics("stsb", np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 3.0])) == zero
    assert compute_metrics("stsb", np.array([0.0, 1.0, 2.0, 3.0]), np.full(4, 2.5)) == zero
    assert compute_metrics("stsb", np.array([1.0]), np.array([4.0])) == zero
    assert compute_metrics("stsb", np.array([np.nan, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == zero


@pytest.mark.parametrize(
    ("task", "predictions", "labels", "message"),
    [
        ("mnli", np.zeros((4, 2)), np.zeros(4), r"mnli: predictions have shape \(4, 2\), expected \(4, 3\)$"),
        ("stsb", np.zeros((4, 2)), np.zeros(4), r"expected \(4,\) or \(4, 1\)$"),
        ("sst2", np.zeros(4), np.zeros(4), r"expected \(4, 2\)$"),
        ("sst2", np.zeros((3, 2)), np.zeros(4), r"shape \(3, 2\), expected \(4, 2\)$"),
        ("sst2", np.zeros((0, 2)), np.zeros(0), r"sst2: no predictions to score$"),
        ("custom", np.zeros((4, 2)), np.zeros(4), r"unknown task 'custom'; known tasks: cola, .* \(custom: pass"),
    ],
)
def test_bad_inputs(task, predictions, labels, message):
    with pytest.raises(SoraError, match=message):
        compute_metrics(task, predictions, labels)

"""GLUE metrics computed locally (evaluate's hub metric modules do not load offline).

Keys follow the names of the GLUE metric in ``evaluate``: accuracy, f1, matthews_correlation,
pearson, spearmanr.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(accuracy_score(labels, predictions))


def _f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    # GLUE's F1 (MRPC, QQP) is the binary F1 of the positive class 1.
    return float(f1_score(labels, predictions, average="binary", pos_label=1, zero_division=0))


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(matthews_corrcoef(labels, predictions))


def _pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(pearsonr(predictions, labels)[0])


def _spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(spearmanr(predictions, labels)[0])


GLUE_METRICS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def glue_metrics(names: list[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The named metrics of ``predictions`` (class ids, or scores for regression) vs ``labels``."""
    return {name: GLUE_METRICS[name](predictions, labels) for name in names}

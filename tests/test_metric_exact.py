"""GLUE metrics on an unbalanced example, where the positive class's F1, the macro F1 and the
accuracy all differ (the balanced example in test_glue_task.py cannot tell them apart)."""
import numpy as np
import pytest

from prunelab.tasks.glue_metrics import glue_metrics


def test_f1_is_the_positive_class_only():
    predictions = np.array([1, 1, 1, 1, 0, 0])
    labels = np.array([1, 1, 0, 0, 0, 1])
    scores = glue_metrics(["accuracy", "f1"], predictions, labels)
    # class 1: tp=2 fp=2 fn=1 -> P = 1/2, R = 2/3, F1 = 4/7 (class 0 alone: 2/5; macro: 17/35)
    assert scores == pytest.approx({"accuracy": 3 / 6, "f1": 4 / 7})

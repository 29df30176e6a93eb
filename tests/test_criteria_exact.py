"""Criterion state after several steps, against hand-worked numbers: how each step's gradients are
accumulated (momentum, sign), which a one-step test cannot tell apart."""
import pytest
import torch
from torch import nn

import prunelab
from prunelab.sparsity.criteria import CRITERIA
from prunelab.sparsity.patterns import parse_pattern

WEIGHT = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
GRADS = [torch.tensor([[0.5, 0.5, -2.0, 0.25]]), torch.tensor([[1.0, -1.0, 2.0, 0.0]])]
# W*G per step: [0.5, -1, -1, 1] then [1, 2, 1, 0]


def observed(name):
    """The criterion's state after seeing both steps of one op (1x1: one unit per weight)."""
    criterion, state = CRITERIA[name], None
    for grad in GRADS:
        state = criterion.observe(state, WEIGHT, grad, parse_pattern("1x1"))
    return state.flatten().tolist()


def test_snip_momentum_decays_the_old_score_by_0_9():
    # 0.9 * |[0.5, -1, -1, 1]| + |[1, 2, 1, 0]|
    assert observed("snip_momentum") == pytest.approx([1.45, 2.9, 1.9, 0.9])


def test_movement_subtracts_every_steps_product():
    # -[0.5, -1, -1, 1] - [1, 2, 1, 0]: weights moving towards zero (W*G > 0) score low
    assert observed("movement") == pytest.approx([-1.5, -1.0, 0.0, -1.0])


def test_snip_momentum_in_the_engine_scores_the_steps_before_a_one_shot_update():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(WEIGHT)
    config = {"pattern": "1x1", "pruning_type": "snip_momentum", "target_sparsity": 0.5, "start_step": 2,
              "end_step": 2, "excluded_op_names": []}
    pruning = prunelab.prepare_pruning(layer, config)
    pruning.on_train_begin()
    for step, grad in enumerate(GRADS):
        pruning.on_step_begin(step)
        layer.weight.grad = grad.clone()
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()  # no optimizer: the weights stay as set
    assert pruning.groups[0].ops[0].state.flatten().tolist() == pytest.approx([1.45, 2.9, 1.9, 0.9])
    pruning.on_step_begin(2)
    assert layer.weight.tolist() == [[0.0, -2.0, 0.5, 0.0]]  # the two lowest scores, 1.45 and 0.9

"""Global scope against hand-counted units: the per-op maximum is rounded down, and the op pinned
at it hands the rest of the target to the other ops (the tolerant tests elsewhere allow a unit)."""
import torch
from torch import nn

import prunelab


def zero_rows(layer):
    return int((layer.weight == 0).all(dim=1).sum())


def test_an_op_pinned_at_its_max_ratio_keeps_the_rounded_down_rows_and_the_other_takes_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Linear(16, 64))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # every row of op 0 scores below every row of op 1
    config = {"pattern": "1xchannel", "pruning_type": "magnitude", "target_sparsity": 0.6, "excluded_op_names": [],
              "max_sparsity_ratio_per_op": 0.98}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    # 0.6 of 128 rows = 76.8 -> 77. Op 0 would lose all 64 but may lose floor(0.98 * 64) = 62;
    # the remaining 76.8 - 62 = 14.8 rows -> 15 go from op 1.
    assert (zero_rows(model[0]), zero_rows(model[1])) == (62, 15)

"""Exact mask invariants for every pattern and scope, on random shapes and sparsities."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunelab
from prunelab.sparsity import selection
from prunelab.sparsity.selection import kth_smallest, lowest_by_weight, lowest_k


def one_shot(model, **keys):
    """Prune ``model`` once by magnitude at step 0 and return the engine."""
    config = {"pruning_type": "magnitude", "excluded_op_names": [], "start_step": 0, "end_step": 0, **keys}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    return pruning


def linear(rows, cols, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(cols, rows)
    nn.init.normal_(layer.weight)  # no exact zeros, so zeros in the weight are the mask's
    return layer


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    groups=st.integers(1, 12),
    n_m=st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2)]),
    fraction=st.floats(0.0, 1.0),
    scope=st.sampled_from(["local", "global"]),
    seed=st.integers(0, 10_000),
)
def test_n_in_m_prunes_n_or_nothing_per_group_and_meets_the_target(rows, groups, n_m, fraction, scope, seed):
    n, m = n_m
    target = fraction * n / m
    layer = nn.Sequential(linear(rows, groups * m, seed), linear(rows + 1, groups * m, seed + 1))
    one_shot(layer, pattern=f"{n}:{m}", target_sparsity=target, pruning_scope=scope, max_sparsity_ratio_per_op=1.0)
    pruned_weights = 0
    for op in layer:
        zeros_per_group = (op.weight == 0).view(op.weight.shape[0], groups, m).sum(-1)
        assert set(zeros_per_group.unique().tolist()) <= {0, n}
        pruned_weights += int(zeros_per_group.sum())
        if scope == "local":  # each op on its own: within one group's N of the target
            assert abs(int(zeros_per_group.sum()) - target * op.weight.numel()) <= n / 2
    total = sum(op.weight.numel() for op in layer)
    assert abs(pruned_weights - target * total) <= n / 2 + (n if scope == "local" else 0)
    if fraction == 1.0:
        for op in layer:
            assert bool(((op.weight != 0).view(op.weight.shape[0], groups, m).sum(-1) == m - n).all())


@settings(max_examples=40, deadline=None)
@given(
    block=st.sampled_from([(4, 1), (1, 4), (2, 2), (1, 1), (8, 1), (2, 4)]),
    row_blocks=st.integers(1, 6),
    col_blocks=st.integers(1, 6),
    target=st.floats(0.0, 0.98),
    scope=st.sampled_from(["local", "global"]),
    seed=st.integers(0, 10_000),
)
def test_nxm_zeros_come_in_whole_blocks_and_meet_the_target(block, row_blocks, col_blocks, target, scope, seed):
    block_rows, block_cols = block
    layers = nn.Sequential(
        linear(row_blocks * block_rows, col_blocks * block_cols, seed),
        linear((row_blocks + 2) * block_rows, col_blocks * block_cols, seed + 1),
    )
    one_shot(
        layers, pattern=f"{block_rows}x{block_cols}", target_sparsity=target, pruning_scope=scope, max_sparsity_ratio_per_op=1.0
    )
    size = block_rows * block_cols
    pruned = 0
    for op in layers:
        rows, cols = op.weight.shape
        zero = (op.weight == 0).view(rows // block_rows, block_rows, cols // block_cols, block_cols)
        assert torch.equal(zero.all(dim=3).all(dim=1), zero.any(dim=3).any(dim=1))  # all-or-none per block
        pruned += int(zero.sum())
        if scope == "local":
            assert abs(int(zero.sum()) - target * op.weight.numel()) <= size / 2 + 1e-9
    total = sum(op.weight.numel() for op in layers)
    assert abs(pruned - target * total) <= size / 2 + (size / 2 if scope == "local" else 0) + 1e-9


@pytest.mark.parametrize("pattern, whole", [("1xchannel", "rows"), ("channelx1", "cols")])
def test_channel_patterns_zero_whole_rows_or_columns(pattern, whole):
    layer = linear(24, 16, seed=3)
    one_shot(layer, pattern=pattern, target_sparsity=0.5, pruning_scope="local")
    zero = layer.weight == 0
    dim = 1 if whole == "rows" else 0
    assert torch.equal(zero.all(dim=dim), zero.any(dim=dim))
    assert int(zero.all(dim=dim).sum()) == (12 if whole == "rows" else 8)


def test_global_channel_pruning_counts_weights_not_rows():
    # Rows of 256 and of 1024 weights: INC counted rows, so 0.9 of the rows was ~0.6 of the weights.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(1024, 64))
    with torch.no_grad():
        model[1].weight.mul_(4.0)  # the wide op's rows score higher: the solver must not count rows
    pruning = one_shot(model, pattern="1xchannel", target_sparsity=0.9)
    report = pruning.report()
    assert abs(report["pruned_ops_sparsity"] - 0.9) <= 1024 / 2 / (64 * 1280)
    per_op = [report["ops"][name]["sparsity"] for name in ("0", "1")]
    assert per_op[0] == pytest.approx(0.98, abs=1 / 64)  # the narrow op pinned at the 0.98 max
    assert per_op[1] < 0.9


def test_global_scope_pins_ops_at_min_and_max_and_still_meets_the_target():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # would be pruned entirely without a max ratio
        model[2].weight.mul_(1e3)  # would keep everything without a min ratio
    pruning = one_shot(
        model, pattern="4x1", target_sparsity=0.6, min_sparsity_ratio_per_op=0.3, max_sparsity_ratio_per_op=0.9
    )
    report = pruning.report()
    sparsity = {name: report["ops"][name]["sparsity"] for name in ("0", "1", "2")}
    assert sparsity["0"] == pytest.approx(0.9, abs=4 / 4096)
    assert sparsity["2"] == pytest.approx(0.3, abs=4 / 2048)
    assert 0.3 <= sparsity["1"] <= 0.9
    assert report["pruned_ops_sparsity"] == pytest.approx(0.6, abs=2 / (4096 * 2 + 2048))


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from([1, 7, 1000, 70_000, 150_000]),
    fraction=st.floats(0.0, 1.0),
    distinct=st.sampled_from([3, 1000, None]),
    seed=st.integers(0, 10_000),
)
def test_lowest_k_marks_exactly_k_lowest_with_ties_to_earliest(size, fraction, distinct, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(size, generator=generator)
    if distinct:  # heavy ties
        values = torch.floor(values * distinct)
    k = round(fraction * size)
    flags = lowest_k(values, k)
    assert int(flags.sum()) == k
    expected = torch.zeros(size)
    expected[torch.sort(values, stable=True).indices[:k]] = 1.0  # stable sort: ties to earliest
    assert torch.equal(flags, expected)
    if k:
        assert kth_smallest(values, k) == float(torch.sort(values).values[k - 1])


def test_kth_smallest_is_exact_when_the_sample_bracket_misses():
    # Put zeros exactly where the (fixed-seed) sample looks and ones elsewhere: the bracket is
    # [0, 0] but the answer is 1, so the exact fallback has to answer.
    n = 100_000
    values = np.ones(n, dtype=np.float32)
    values[np.random.default_rng(0).integers(0, n, selection._SAMPLE_SIZE)] = 0.0
    zeros = int((values == 0).sum())
    assert kth_smallest(torch.from_numpy(values), zeros + 1) == 1.0
    assert kth_smallest(torch.from_numpy(values), zeros) == 0.0


def test_lowest_by_weight_gets_closest_to_the_weight_target():
    values = torch.tensor([0.5, 0.1, 0.3, 0.2])
    weights = torch.tensor([10.0, 4.0, 4.0, 4.0])
    assert lowest_by_weight(values, weights, 9.0).tolist() == [0, 1, 0, 1]  # 8 is closer to 9 than 12
    assert lowest_by_weight(values, weights, 11.0).tolist() == [0, 1, 1, 1]
    assert lowest_by_weight(values, weights, 0.0).tolist() == [0, 0, 0, 0]


def test_magnitude_prunes_the_smallest_weights():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]]))
    one_shot(layer, pattern="1x1", target_sparsity=0.5, pruning_scope="global")
    assert (layer.weight == 0).nonzero().tolist() == [[0, 0], [0, 2], [1, 0], [1, 1]]
    assert math.isclose(layer.weight[0, 1].item(), -5.0)

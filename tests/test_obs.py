"""The Optimal BERT Surgeon (pruning_type obs): its algebra against dense linear algebra, its
pruning against a quadratic loss with a known Hessian, pattern invariants, exact resume."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import prunelab
from prunelab.sparsity import fisher, obs


def _random_inverse(blocks: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(blocks, size, size, generator=generator, dtype=torch.float64)
    return (a @ a.transpose(1, 2) / size + torch.eye(size, dtype=torch.float64)).float()


def test_blockwise_inverse_equals_the_inverse_of_the_damped_empirical_fisher():
    blocks, size, count, damp = 5, 8, 24, 1e-2
    grads = torch.randn(count, blocks, size, generator=torch.Generator().manual_seed(0))
    accumulated = fisher.damped_fisher(blocks, size, damp)
    for chunk in (grads[:1], grads[1:8], grads[8:]):  # 1, then 7, then 16 gradients at a time
        fisher.add_gradients(accumulated, chunk.permute(1, 2, 0), count)
    inverse = fisher.inverse(accumulated)
    dense = damp * torch.eye(size, dtype=torch.float64) + torch.einsum("mbi,mbj->bij", grads.double(), grads.double()) / count
    expected = torch.linalg.inv(dense)
    assert torch.allclose(inverse.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_obs_update_zeroes_the_pruned_weights_and_equals_the_closed_form():
    blocks, size = 6, 8
    inverse = _random_inverse(blocks, size, seed=1)
    weight = torch.randn(blocks, size, generator=torch.Generator().manual_seed(2))
    pruned = torch.zeros(blocks, size, dtype=torch.bool)
    for block, count in enumerate([0, 1, 2, 3, 5, 8]):  # every number of pruned coordinates per block
        pruned[block, torch.randperm(size, generator=torch.Generator().manual_seed(block))[:count]] = True
    delta = fisher.obs_update(inverse, weight, pruned)
    for block in range(blocks):
        q = pruned[block].nonzero().squeeze(1)
        inv, w = inverse[block].double(), weight[block].double()
        expected = -inv[:, q] @ torch.linalg.solve(inv[q][:, q], w[q]) if len(q) else torch.zeros(size, dtype=torch.float64)
        assert torch.allclose(delta[block].double(), expected, atol=1e-5)
    after = weight + delta
    assert after[pruned].abs().max() < 1e-5


def test_unit_scores_equal_the_closed_form():
    blocks, size, unit = 3, 8, 4
    inverse = _random_inverse(blocks, size, seed=3)
    weight = torch.randn(blocks, size, generator=torch.Generator().manual_seed(4))
    single = fisher.unit_scores(inverse, weight, 1)
    assert torch.allclose(single, (weight.square() / (2 * inverse.diagonal(dim1=1, dim2=2))).flatten())
    grouped = fisher.unit_scores(inverse, weight, unit)
    expected = []
    for block in range(blocks):
        for start in range(0, size, unit):
            q = slice(start, start + unit)
            w = weight[block, q].double()
            expected.append(0.5 * w @ torch.linalg.solve(inverse[block, q, q].double(), w))
    assert torch.allclose(grouped.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)


# ------------------------------------------------------------------ pruning a quadratic loss
ROWS, COLS, BLOCK = 4, 8, 8  # one Linear; 1x1 pattern: each row is one Fisher block of 8 weights
# The engine's Fisher is DAMP * I + mean g g^T; the gradients below make it exactly the loss's
# Hessian. A damping near the Hessian's scale, as oBERT's 1e-7 is near BERT's gradient outer
# products, keeps float32 Woodbury updates accurate (no cancellation of 1/damp-sized entries).
DAMP = 0.01


def _hessians(seed: int) -> torch.Tensor:
    """One well-conditioned 8 x 8 Hessian per row (float64)."""
    a = torch.randn(ROWS, BLOCK, BLOCK, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.transpose(1, 2) / BLOCK + 0.1 * torch.eye(BLOCK, dtype=torch.float64)


def _prune_quadratic(target: float, pruning_type: str, hessian: torch.Tensor):
    """Prune a Linear whose loss is ``0.5 (w - w0)^T H (w - w0)`` per row, with a Fisher made of
    gradients whose mean outer product is exactly H: returns (w0, pruned weights)."""
    torch.manual_seed(0)
    layer = nn.Linear(COLS, ROWS, bias=False)
    w0 = layer.weight.detach().clone().double()
    count = BLOCK
    # H - DAMP I = L L^T: gradients sqrt(m) L[:, i] give mean g g^T = H - DAMP I
    root = torch.linalg.cholesky(hessian - DAMP * torch.eye(BLOCK, dtype=torch.float64))
    config = {"pattern": "1x1", "pruning_type": pruning_type, "target_sparsity": target, "start_step": count,
              "end_step": count, "excluded_op_names": [], "pruning_scope": "global", "max_sparsity_ratio_per_op": 1.0}
    if pruning_type == "obs":
        config["obs"] = {"num_grads": count, "block_size": BLOCK, "damp": DAMP}
    pruning = prunelab.prepare_pruning(nn.Sequential(layer), config)
    pruning.on_train_begin()
    for step in range(count + 1):
        pruning.on_step_begin(step)
        if step < count:
            layer.weight.grad = (count**0.5 * root[:, :, step]).float()
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()
        layer.weight.grad = None
    pruning.on_train_end()
    return w0, layer.weight.detach().double()


def _loss_increase(w0: torch.Tensor, w: torch.Tensor, hessian: torch.Tensor) -> float:
    d = w - w0
    return float(0.5 * torch.einsum("ri,rij,rj->", d, hessian, d))


def test_pruning_one_weight_raises_the_loss_by_exactly_the_smallest_score():
    hessian = _hessians(seed=5)
    w0, w = _prune_quadratic(1 / (ROWS * COLS), "obs", hessian)
    scores = w0.square() / (2 * torch.linalg.inv(hessian).diagonal(dim1=1, dim2=2))
    assert int((w == 0).sum()) == 1
    assert (w == 0).flatten().nonzero().item() == int(scores.argmin())
    assert _loss_increase(w0, w, hessian) == pytest.approx(float(scores.min()), rel=1e-3)


def test_obs_pruning_costs_its_joint_prediction_and_less_than_magnitude():
    hessian = _hessians(seed=6)
    w0, w = _prune_quadratic(0.5, "obs", hessian)
    pruned = w == 0
    assert int(pruned.sum()) == ROWS * COLS // 2
    inverse = torch.linalg.inv(hessian)
    predicted = 0.0
    for row in range(ROWS):  # the exact OBS cost of removing this row's pruned set jointly
        q = pruned[row].nonzero().squeeze(1)
        predicted += float(0.5 * w0[row, q] @ torch.linalg.solve(inverse[row][q][:, q], w0[row, q]))
    obs_cost = _loss_increase(w0, w, hessian)
    assert obs_cost == pytest.approx(predicted, rel=1e-3)
    _, magnitude = _prune_quadratic(0.5, "magnitude", hessian)
    assert obs_cost < _loss_increase(w0, magnitude, hessian)


# ---------------------------------------------------------------------- patterns and scopes
def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _run(model: nn.Module, config: dict, steps: int, lr: float = 0.01, state: dict | None = None, stop: int | None = None):
    """Train ``model`` on fixed random batches with the engine's hooks; ``stop``: return the
    engine's and the optimizer's states after that many steps instead of finishing."""
    pruning = prunelab.prepare_pruning(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if state is not None:
        pruning.load_state_dict(state["pruning"])
        optimizer.load_state_dict(state["optimizer"])
    pruning.on_train_begin()
    for step in range(pruning.step, steps):
        if step == stop:
            return {"pruning": pruning.state_dict(), "optimizer": optimizer.state_dict()}
        generator = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator)
        pruning.on_step_begin(step)
        nn.functional.cross_entropy(model(x), y).backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    pruning.on_train_end()
    return pruning


GRADUAL = {"pruning_type": "obs", "start_step": 0, "end_step": 12, "pruning_frequency": 4,
           "sparsity_decay_type": "cubic", "excluded_op_names": ["^4$"], "obs": {"num_grads": 2, "damp": 1e-4}}


@pytest.mark.parametrize("scope", ["global", "local"])
def test_two_to_four_groups_hold_under_obs(scope):
    model = _mlp()
    pruning = _run(model, {**GRADUAL, "pattern": "2:4", "target_sparsity": 0.5, "pruning_scope": scope}, 14)
    for name in ("0", "2"):
        groups = model.get_submodule(name).weight.detach().view(-1, 4)
        assert torch.equal((groups == 0).sum(dim=1), torch.full((groups.shape[0],), 2))
    assert pruning.report()["pruned_ops_sparsity"] == 0.5


@pytest.mark.parametrize("scope", ["global", "local"])
def test_four_by_one_blocks_are_pruned_whole_under_obs(scope):
    model = _mlp()
    pruning = _run(model, {**GRADUAL, "pattern": "4x1", "target_sparsity": 0.75, "pruning_scope": scope,
                           "obs": {"num_grads": 2, "block_size": 8, "num_recomputations": 2}}, 14)
    for name in ("0", "2"):
        weight = model.get_submodule(name).weight.detach()
        blocks = (weight == 0).view(weight.shape[0] // 4, 4, weight.shape[1]).sum(dim=1)
        assert set(blocks.unique().tolist()) <= {0, 4}  # a block of 4 rows x 1 column is all zero or all kept
        if scope == "local":
            assert float((weight == 0).float().mean()) == 0.75
    assert pruning.report()["pruned_ops_sparsity"] == 0.75


def test_whole_rows_are_pruned_under_obs():
    model = _mlp()
    _run(model, {**GRADUAL, "pattern": "1xchannel", "target_sparsity": 0.5, "pruning_scope": "local"}, 14)
    rows = (model[0].weight == 0).all(dim=1)
    assert int(rows.sum()) == 16 and bool(((model[0].weight != 0).all(dim=1) | rows).all())


def test_without_update_weights_kept_weights_stay_as_trained():
    """update_weights=false prunes with obs scores only: lr 0, so kept weights never move."""
    config = {**GRADUAL, "pattern": "1x1", "target_sparsity": 0.5}
    moved, still = _mlp(), _mlp()
    start = _mlp()[0].weight.detach()
    _run(moved, config, 14, lr=0.0)
    _run(still, {**config, "obs": {**config["obs"], "update_weights": False}}, 14, lr=0.0)
    kept = still[0].weight != 0
    assert torch.equal(still[0].weight.detach()[kept], start[kept])
    assert not torch.equal(moved[0].weight.detach()[moved[0].weight != 0], start[moved[0].weight != 0])


def test_resume_inside_a_fisher_window_is_bit_exact():
    config = {**GRADUAL, "pattern": "4x1", "target_sparsity": 0.75, "obs": {"num_grads": 3, "block_size": 8}}
    whole = _mlp()
    _run(whole, config, 14)
    first = _mlp()
    saved = _run(first, config, 14, stop=6)  # step 6: one gradient into the window of the update at 8
    assert any(op["state"] is not None for group in saved["pruning"]["groups"] for op in group["ops"].values())
    resumed = _mlp()
    resumed.load_state_dict(first.state_dict())
    _run(resumed, config, 14, state=saved)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------ bad configs
@pytest.mark.parametrize(
    "change, message",
    [
        ({"pattern": "4x1", "obs": {"block_size": 50}}, "obs.block_size=50 must be a multiple of the pattern's unit"),
        ({"pruning_frequency": 2, "obs": {"num_grads": 3}}, "num_grads=3 x num_recomputations=1 gradient steps must fit "
         "before each mask update, but pruning_frequency=2 leaves 2; lower obs.num_grads or obs.num_recomputations, "
         "or give a larger pruning_frequency"),
        ({"start_step": 1, "initial_sparsity": 0.3, "obs": {"num_grads": 2}}, "but start_step=1 (the first update prunes) "
         "leaves 1; lower obs.num_grads or obs.num_recomputations, or give a later start_step"),
        ({"obs": {"num_grads": 2, "num_recomputations": 3}}, "num_grads=2 x num_recomputations=3"),
        ({"pruning_type": "obs_progressive"}, "obs moves the kept weights"),
        ({"pruning_type": "snip", "obs": {"num_grads": 2}}, "obs: has no effect with pruning_type='snip'"),
        ({"pattern": "head"}, "does not prune coupled units"),
        ({"obs": {"blocksize": 8}}, "unknown key obs.blocksize"),
        ({"obs": {"damp": 0}}, "obs.damp=0 must be a number > 0"),
    ],
)
def test_bad_obs_settings_are_one_line_naming_the_key(change, message):
    config = {**GRADUAL, "pattern": "1x1", "target_sparsity": 0.5, **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prunelab.prepare_pruning(_mlp(), config)


def test_memory_beyond_what_is_free_is_refused_with_the_estimate(monkeypatch):
    model = _mlp()
    config = {**GRADUAL, "pattern": "1x1", "target_sparsity": 0.5, "obs": {"num_grads": 2, "block_size": 16}}
    weights = 16 * 32 + 32 * 16
    fisher_bytes = weights * 16 * 8  # float64 sums
    monkeypatch.setattr(obs, "_free_bytes", lambda device: fisher_bytes)
    with pytest.raises(ValueError, match=r"need about .* GiB \(1024 weights x block_size 16 x 8 bytes.*lower obs.block_size"):
        prunelab.prepare_pruning(model, config)
    monkeypatch.setattr(obs, "_free_bytes", lambda device: 10 * fisher_bytes)
    group = prunelab.prepare_pruning(model, config).groups[0]
    assert group.fisher_bytes() == fisher_bytes


def test_fisher_memory_measured_matches_the_estimate():
    model = _mlp()
    config = {**GRADUAL, "pattern": "1x1", "target_sparsity": 0.5, "obs": {"num_grads": 2, "block_size": 12}}
    saved = _run(model, config, 14, stop=3)  # inside the first window: every op holds its inverse
    held = sum(op["state"].numel() * op["state"].element_size() for group in saved["pruning"]["groups"]
               for op in group["ops"].values())
    group = prunelab.prepare_pruning(_mlp(), config).groups[0]
    assert held == group.fisher_bytes() == sum(-(-n // 12) * 144 * 8 for n in (512, 512))


def test_num_grads_left_unset_takes_the_steps_between_updates():
    config = {**GRADUAL, "pattern": "1x1", "target_sparsity": 0.5, "obs": {}}
    group = prunelab.prepare_pruning(_mlp(), config).groups[0]
    assert (group.num_grads, group.recomputations) == (4, 1)
    windows = [step for step in range(14) if group._observes(step)]
    assert windows == list(range(0, 12))  # every step before the updates at 4, 8, 12 feeds a window
    assert [step for step in range(14) if group._sub_update_target(step)] == [4, 8, 12]
    assert list(itertools.islice((group._sub_update_target(s) for s in (4, 8, 12)), 3))[-1] == 0.5


def test_fewer_gradients_than_the_block_with_large_gradients_still_factorise():
    # Rank 4 in blocks of 50 with |g|^2 ~ 1e4: float32 sums had negative eigenvalues beyond damp.
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(256, 50, 4, generator=generator) * 100
    state = fisher.damped_fisher(256, 50, 1e-7)
    fisher.add_gradients(state, grads, 4)
    inverse = fisher.inverse(state)
    assert torch.isfinite(inverse).all() and (inverse.diagonal(dim1=1, dim2=2) > 0).all()

"""How weights are scored (``pruning_type`` without ``_progressive``). Low score = pruned first.

Each criterion keeps at most one tensor of state per op, in the pattern's reduced shape (per block
for NxM patterns: momentum of a block mean equals the mean of element momenta), and says on which
optimizer steps it must look at gradients:

=============  ==========================================  =========================================
criterion      score                                       gradients observed
=============  ==========================================  =========================================
magnitude      ``|W|`` at the update                       never
gradient       ``|G|``                                     on the step before each pruning update
snip           ``|W * G|``                                 on the step before each pruning update
snip_momentum  ``score = 0.9 * score + |W * G|``           every step from ``MOMENTUM_HORIZON``
                                                           steps before the first pruning update
movement       ``score += -W * G`` (Sanh et al. 2020)      every step from step 0
obs            ``0.5 w_Q^T ([F^-1]_QQ)^-1 w_Q`` (oBERT)    the ``num_grads`` steps before each update
wanda          ``|W_ij| * ||X_j||_2`` per output row        never (the ops' inputs X before the update)
sparsegpt      ``w^2 / [U]_jj^2``, ``U^T U = (2XX^T)^-1``   never (the ops' inputs X before the update)
=============  ==========================================  =========================================

``obs`` is second order: its state is a block-diagonal Fisher inverse and its updates also move
the kept weights, so its groups are ``prunelab.sparsity.obs.ObsGroup`` (``second_order``).
``wanda`` and ``sparsegpt`` prune once from the inputs their ops see in the forward passes before
the update (``calibrated``; ``prunelab.sparsity.calibrated.CalibratedGroup``, the algebra in
``prunelab.sparsity.hessian``).

Observation runs in ``on_before_optimizer_step`` after pruned gradients are zeroed, so pruned
weights add nothing; they stay pruned anyway because selection puts them first.
"""
from __future__ import annotations

import torch

from prunelab.sparsity import hessian
from prunelab.sparsity.patterns import NInMPattern, Pattern
from prunelab.sparsity.schedules import Schedule

MOMENTUM = 0.9  # INC's snip_momentum decay (its "alpha")
# Contributions older than 100 steps keep under 3e-5 (0.9**100) of their weight, so scoring starts
# 100 steps before the first pruning update: the dense phase before it pays no scoring cost.
MOMENTUM_HORIZON = 100


class Criterion:
    name = ""
    needs_grad = True
    second_order = False  # True: pruned by an ObsGroup (Fisher state, weight updates)
    calibrated = False  # True: prunes once from its ops' inputs in forward passes (CalibratedGroup)

    def calibration_steps(self, config, examples_per_step: int = 1) -> int:
        """Steps (gradient passes, or forward passes for a ``calibrated`` criterion) a one-shot
        prune of a ``GroupConfig`` needs before its update (the ``start_step`` of a prune without
        training); ``examples_per_step``: training examples per step over all processes."""
        return 1 if self.needs_grad else 0

    def observes(self, step: int, schedule: Schedule) -> bool:
        """Whether gradients of optimizer step ``step`` feed the score."""
        return False

    def observe(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """The new state after seeing ``[rows, cols]`` views of one op's weight and gradient.

        Called op by op: each op's temporaries are freed before the next op's are made, so they
        stay in cache (building all ops' products first runs several times slower on CPU).
        """
        return self.accumulate(state, pattern.reduce(self.elementwise(weight, grad)))

    def elementwise(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """This step's element-wise contribution (float32), before a pattern sums it per unit."""
        raise NotImplementedError

    def accumulate(self, state: torch.Tensor | None, fresh: torch.Tensor) -> torch.Tensor:
        """The new state from the old one and this step's per-unit sums ``fresh`` (may reuse either).

        Split from ``elementwise`` so that coupled units (``prunelab.sparsity.coupled``), whose
        weights lie in several modules, sum the contributions of all their modules first.
        """
        return fresh

    def magnitude(self, weight: torch.Tensor) -> torch.Tensor:
        """Element-wise score of a criterion that needs no gradients (``magnitude``)."""
        raise NotImplementedError

    def score(self, state: torch.Tensor | None, weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """The reduced score used at a mask update."""
        if state is None:
            return pattern.reduce(torch.zeros_like(weight, dtype=torch.float32))
        return state


def _product(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.mul(weight.float(), grad.float())


class Magnitude(Criterion):
    name = "magnitude"
    needs_grad = False

    def magnitude(self, weight):
        return weight.float().abs()

    def score(self, state, weight, pattern):
        return pattern.reduce(self.magnitude(weight))


class _LastStep(Criterion):
    """Scores from the single step right before each pruning update."""

    def observes(self, step, schedule):
        following = step + 1
        return following >= schedule.first_pruning_step and schedule.update_index(following) is not None


class Gradient(_LastStep):
    name = "gradient"

    def elementwise(self, weight, grad):
        return grad.float().abs()


class Snip(_LastStep):
    name = "snip"

    def elementwise(self, weight, grad):
        return _product(weight, grad).abs_()


class SnipMomentum(Criterion):
    name = "snip_momentum"

    def observes(self, step, schedule):
        return schedule.first_pruning_step - MOMENTUM_HORIZON <= step < schedule.last_update_step

    def elementwise(self, weight, grad):
        return _product(weight, grad).abs_()

    def accumulate(self, state, fresh):
        # fresh + 0.9 * state in one pass, written over the state
        return fresh if state is None else torch.add(fresh, state, alpha=MOMENTUM, out=state)


class Movement(Criterion):
    name = "movement"

    def observes(self, step, schedule):
        return step < schedule.last_update_step

    def elementwise(self, weight, grad):
        return _product(weight, grad)

    def accumulate(self, state, fresh):
        return fresh.neg_() if state is None else state.sub_(fresh)


class Obs(Criterion):
    """The Optimal BERT Surgeon; the scoring and its windows live in ``ObsGroup``."""

    name = "obs"
    second_order = True

    def calibration_steps(self, config, examples_per_step=1):
        settings = config.obs_settings
        return (settings.num_grads or DEFAULT_NUM_GRADS) * settings.num_recomputations


class _Calibrated(Criterion):
    """Prunes once from the inputs ``X`` of its ops in the forward passes before the update; the
    state is ``input_statistic`` accumulated over them, the mask (and weights) come from ``prune``."""

    needs_grad = False
    calibrated = True

    def calibration_steps(self, config, examples_per_step=1):
        return -(-config.calibration_samples_or_default // max(1, examples_per_step))

    def check_settings(self, config, name) -> None:
        """``ValueError`` naming the key (``name(key)``) for settings of a ``GroupConfig`` this
        criterion cannot use."""

    def input_statistic(self, cols: int, device) -> torch.Tensor:
        """The empty statistic of an op with ``cols`` inputs (filled by ``hessian.add_inputs``)."""
        raise NotImplementedError

    def prune(self, weight, keep, statistic, tokens, sparsity, n_m, config):
        """``(new weight or None, keep mask)`` for ``[rows, cols]`` views; ``n_m``: ``(N, M)`` or None."""
        raise NotImplementedError


class Wanda(_Calibrated):
    name = "wanda"

    def input_statistic(self, cols, device):
        return torch.zeros(cols, dtype=torch.float32, device=device)  # ||X_j||^2

    def prune(self, weight, keep, statistic, tokens, sparsity, n_m, config):
        return None, hessian.wanda_mask(weight, statistic, sparsity, n_m, keep)


class SparseGPT(_Calibrated):
    name = "sparsegpt"

    def input_statistic(self, cols, device):
        return torch.zeros(cols, cols, dtype=torch.float32, device=device)  # X X^T

    def check_settings(self, config, name):
        pattern, block = config.pattern_object, config.sparsegpt_settings.block_size
        if isinstance(pattern, NInMPattern) and block % pattern.m:  # a group of M must lie inside one block
            raise ValueError(f"{name('sparsegpt')}.block_size={block} must be a multiple of M={pattern.m} ({pattern.name})")

    def prune(self, weight, keep, statistic, tokens, sparsity, n_m, config):
        settings = config.sparsegpt_settings
        return hessian.sparsegpt(weight, statistic, tokens, sparsity, n_m, settings.block_size, settings.damp, keep)


# oBERT's number of gradients per Fisher estimate (its paper and SparseML's default).
DEFAULT_NUM_GRADS = 1024

CRITERIA = {c.name: c for c in (Magnitude(), Gradient(), Snip(), SnipMomentum(), Movement(), Obs(), Wanda(), SparseGPT())}

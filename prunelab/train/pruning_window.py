"""When pruning happens, in optimizer steps: the ``scheduler`` config group.

Pruning starts after ``sparsity_warm_epochs`` and ends ``cooldown_epochs`` before the end of
training; the result is the engine's ``start_step``/``end_step``/``pruning_frequency`` keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prunelab.errors import ConfigError

# INC's reference scripts spread the mask updates of an automatic frequency over 40 points.
AUTO_UPDATES = 40


@dataclass
class PruningSteps:
    """Where the pruning window falls for one run (all counts in optimizer steps)."""

    steps_per_epoch: int
    num_train_epochs: int
    sparsity_warm_epochs: float
    cooldown_epochs: float
    gradient_steps: int = 0  # num_train_epochs=0: gradient passes (no optimizer step) before the one prune

    @property
    def start(self) -> int:
        return round(self.sparsity_warm_epochs * self.steps_per_epoch)

    @property
    def last(self) -> int:
        """The last step of the window: the step before cooldown starts (0-based, inclusive)."""
        total = self.steps_per_epoch * self.num_train_epochs
        return total - round(self.cooldown_epochs * self.steps_per_epoch) - 1


@dataclass
class IterativeSchedule:
    """Sparsity rises from 0 (or ``initial_sparsity``, reached at the window's first update) to the
    target over the window along ``sparsity_decay_type`` (linear, cos, exp, cube: INC's slow start;
    cubic: Zhu-Gupta's fast start). ``lr_rewinding``: the learning rate decays linearly to 0 from
    step 0 to the first pruning update and from each update to the next (the last: to the end of
    training), restarting at its peak after every update (oBERT's GMP* and oBERT recipes)."""

    one_shot = False  # masks change over a window of steps (read by the config checks; not a config key)
    sparsity_decay_type: str = "exp"
    initial_sparsity: float = 0.0
    lr_rewinding: bool = False
    update_every_epochs: Optional[float] = None

    def engine_keys(self, steps: PruningSteps, pruning_frequency: int | None) -> dict:
        if steps.num_train_epochs == 0:
            raise ConfigError("num_train_epochs=0 prunes once without training: use scheduler=oneshot")
        start, end = steps.start, steps.last
        if end < start:
            raise ConfigError(
                f"sparsity_warm_epochs={steps.sparsity_warm_epochs} + cooldown_epochs={steps.cooldown_epochs}: "
                f"leave no pruning steps within num_train_epochs={steps.num_train_epochs}"
            )
        if pruning_frequency is not None and self.update_every_epochs is not None:
            raise ConfigError(
                f"pruning_frequency={pruning_frequency} and scheduler.update_every_epochs={self.update_every_epochs} "
                "both say how often masks are updated; keep one"
            )
        if self.update_every_epochs is not None:
            if not self.update_every_epochs > 0:
                raise ConfigError(f"scheduler.update_every_epochs={self.update_every_epochs}: must be > 0 (null: pruning_frequency)")
            pruning_frequency = max(1, round(self.update_every_epochs * steps.steps_per_epoch))
        frequency = pruning_frequency or max(1, (end - start + 1) // AUTO_UPDATES)
        return {
            "start_step": start,
            "end_step": end,
            "pruning_frequency": frequency,
            "sparsity_decay_type": self.sparsity_decay_type,
            "initial_sparsity": self.initial_sparsity,
        }


@dataclass
class OneShotSchedule:
    """The whole target at once, on the first step after ``sparsity_warm_epochs`` (at least step 1,
    so gradient-based criteria have one step of gradients to score); masks then stay. Without
    training (``num_train_epochs=0``), after the gradient passes the criterion needs."""

    one_shot = True  # one mask update: settings about later updates have no effect (not a config key)
    lr_rewinding = False  # one update: no learning rate to rewind (not a config key)

    def engine_keys(self, steps: PruningSteps, pruning_frequency: int | None) -> dict:
        if steps.num_train_epochs == 0:
            return {"start_step": steps.gradient_steps, "end_step": steps.gradient_steps, "pruning_frequency": 1}
        total = steps.steps_per_epoch * steps.num_train_epochs
        start = max(steps.start, 1)
        if start >= total:
            raise ConfigError(
                f"sparsity_warm_epochs={steps.sparsity_warm_epochs}: one-shot pruning must start before "
                f"num_train_epochs={steps.num_train_epochs} end (training has {total} optimizer steps)"
            )
        return {"start_step": start, "end_step": start, "pruning_frequency": 1}

"""Training checkpoints for an exact resume: ``<run dir>/checkpoints/step-<N>/``.

A checkpoint is accelerate's ``save_state`` (model, optimizer, RNG states of every process, and
every registered object with ``state_dict``: the LR schedule, the pruning engine) plus
``trainer_state.json``: where in the data the loop stands (epoch, micro-batches of that epoch
already consumed), the train losses of the epoch so far and the names of the callbacks' parameter
groups in the optimizer (so that a resume whose optimizer differs is refused before loading). It
is written into ``step-<N>.tmp/`` and renamed once whole, so a crash never leaves a checkpoint that
looks complete; only the newest ``keep`` are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
STATE_FORMAT = "prunelab.trainer/1"
PARAMETER_GROUPS = "parameter_groups"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class LoopPosition:
    """Where training stands: ``step`` optimizer steps done, ``micro`` micro-batches of epoch
    ``epoch`` consumed (0 = the epoch has not started), ``epoch_losses`` their losses."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    epoch_losses: list[float] = field(default_factory=list)


@dataclass
class CheckpointPolicy:
    """every: "epoch" (after each epoch's evaluation), N (every N optimizer steps) or None (never);
    keep: how many of the newest checkpoints stay on disk."""

    directory: Path
    every: str | int | None
    keep: int = 2

    def due(self, step: int, epoch_end: bool) -> bool:
        if self.every == "epoch":
            return epoch_end
        return isinstance(self.every, int) and step > 0 and step % self.every == 0

    def save(self, accelerator, position: LoopPosition, parameter_groups: Sequence[str] = ()) -> Path:
        """``accelerator.save_state`` on every process, then the main one publishes it.
        parameter_groups: names of the callbacks' parameter groups in the saved optimizer."""
        final = self.directory / f"step-{position.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if accelerator.is_main_process:
            for stale in (tmp, final):
                if stale.exists():
                    shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {"format": STATE_FORMAT, **asdict(position), PARAMETER_GROUPS: list(parameter_groups)}
            (tmp / TRAINER_STATE).write_text(json.dumps(state) + "\n", encoding="utf-8")
            os.replace(tmp, final)
            for old in list_checkpoints(self.directory)[: -self.keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def read_position(checkpoint: Path) -> LoopPosition:
    """The loop position stored in a checkpoint; ``ValueError`` when it is not one of ours."""
    state = _read_state(checkpoint)
    state.pop(PARAMETER_GROUPS, None)
    return LoopPosition(**state)


def read_parameter_groups(checkpoint: Path) -> list[str]:
    """Names of the callbacks' parameter groups the checkpoint's optimizer holds; none in a
    checkpoint written before callbacks could add parameters to the trainer's optimizer."""
    return _read_state(checkpoint).get(PARAMETER_GROUPS, [])


def _read_state(checkpoint: Path) -> dict:
    path = checkpoint / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{checkpoint}: not a prunelab checkpoint (no readable {TRAINER_STATE})") from error
    if state.pop("format", None) != STATE_FORMAT:
        raise ValueError(f"{path}: not a prunelab trainer state (expected format {STATE_FORMAT})")
    return state

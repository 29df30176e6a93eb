"""The run directory's life cycle: refuse to mix two runs in one directory, wipe on request, and
find the checkpoint a resumed run continues from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from prunelab.app.config import to_input_path
from prunelab.app.quantization import QUANTIZED_DIR
from prunelab.errors import ConfigError
from prunelab.outputs import CONFIG, METRICS, MODEL_DIR, SUMMARY, write_text_atomic
from prunelab.train.checkpointing import CHECKPOINTS, TRAINER_STATE, list_checkpoints, read_position

# What every run writes into its directory (Hydra's .hydra/ and log files are Hydra's); its task's
# own files (``Task.output_files``) come on top.
RUN_OUTPUTS = (SUMMARY, METRICS, CONFIG, MODEL_DIR, f"{MODEL_DIR}.tmp", CHECKPOINTS, QUANTIZED_DIR, "export")
# Keys that may differ between a checkpointed run and its resumption.
RESUME_MAY_CHANGE = ("resume_from_checkpoint", "overwrite_output_dir", "checkpointing_steps", "checkpoints_to_keep",
                     "progress_bar")


def previous_outputs(out: Path, task_files: Sequence[str] = ()) -> list[str]:
    """The outputs ``out`` holds: RUN_OUTPUTS and ``task_files``, those the task declares."""
    return [name for name in (*RUN_OUTPUTS, *task_files) if (out / name).exists()]


def clear_outputs(out: Path, task_files: Sequence[str]) -> None:
    for name in previous_outputs(out, task_files):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def completed_run(out: Path) -> dict | None:
    """The summary of the run in ``out`` if it completed, else None."""
    path = out / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or cut short mid-write: not a completed run
        return None
    return summary if summary.get("status") == "completed" else None


def find_checkpoint(value: str, out: Path) -> Path | None:
    """The checkpoint ``resume_from_checkpoint=value`` names: a checkpoint directory, a run
    directory (its newest checkpoint), or ``auto`` (this run directory's newest, None if none)."""
    if value == "auto":
        found = list_checkpoints(out / CHECKPOINTS)
        return found[-1] if found else None
    path = Path(to_input_path(value))
    if (path / TRAINER_STATE).is_file():
        return path
    found = list_checkpoints(path / CHECKPOINTS)
    if found:
        return found[-1]
    raise ConfigError(
        f"resume_from_checkpoint={value}: no checkpoint there (give a <run dir>/{CHECKPOINTS}/step-N directory "
        f"or a run directory written with checkpointing_steps set)"
    )


def check_resumable(checkpoint: Path, cfg_yaml: str, value: str) -> None:
    """The resumed run must be the checkpointed one: same config except RESUME_MAY_CHANGE."""
    try:
        read_position(checkpoint)
    except ValueError as error:
        raise ConfigError(f"resume_from_checkpoint={value}: {error}") from None
    saved_path = checkpoint.parent.parent / CONFIG
    if not saved_path.is_file():
        raise ConfigError(f"resume_from_checkpoint={value}: {saved_path} is missing, so the run cannot be matched")
    saved = _flatten(OmegaConf.to_container(OmegaConf.create(saved_path.read_text(encoding="utf-8"))))
    now = _flatten(OmegaConf.to_container(OmegaConf.create(cfg_yaml)))
    for key in sorted(set(saved) | set(now)):
        if key.split(".")[0] in RESUME_MAY_CHANGE:
            continue
        if saved.get(key) != now.get(key):
            raise ConfigError(
                f"resume_from_checkpoint={value}: {key} was {json.dumps(saved.get(key))} in the checkpointed run "
                f"and is {json.dumps(now.get(key))} now; resume with the run's own settings"
            )


def truncate_metrics(out: Path, step: int) -> None:
    """Drop evaluations logged after the checkpoint's step: the resumed run logs them again."""
    path = out / METRICS
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}

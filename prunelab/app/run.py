"""One run: check the config, claim the run directory, then the stages of ``prunelab.app.stages``.

``run(cfg)`` returns the final eval metrics; ``python -m prunelab`` is a thin Hydra wrapper over it.
What a run writes and when:
- nothing, if the config is wrong and the directory holds another run's outputs (they are kept),
  or with ``resume_from_checkpoint=auto`` in a directory whose run completed (one line says so);
- ``summary.json`` at once (``running``), rewritten at the end: ``completed``, ``failed`` with
  the error, or ``preempted`` with the signal (after a checkpoint when checkpointing is on).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from prunelab.app.cluster import join_submitit_tasks
from prunelab.app.config import build, register_resolvers
from prunelab.app.run_dir import (
    check_resumable,
    clear_outputs,
    completed_run,
    find_checkpoint,
    previous_outputs,
    truncate_metrics,
)
from prunelab.app.schema import PRUNING_ONLY_KEYS, check_config, check_inert_overrides
from prunelab.app.stages import STAGES, RunState, check_pruning
from prunelab.errors import ConfigError, RunInterrupted
from prunelab.outputs import CONFIG, SUMMARY, RunSummary, write_text_atomic
from prunelab.sparsity.config import locks_existing_zeros
from prunelab.train.checkpointing import read_position
from prunelab.train.interrupts import StopOnSignal

register_resolvers()
# The keys that the pattern and pruner groups set.
PRUNING_GROUP_KEYS = {"pattern": "pruning.pattern", "pruner": "pruning.pruning_type"}
# The run shows one progress bar (training); tokenizing, shard writing and loading stay quiet.
datasets.disable_progress_bars()
transformers.utils.logging.disable_progress_bar()
# accelerate logs every file of every checkpoint at INFO, the ONNX exporter every pass it runs.
for chatty in ("accelerate", "onnx_ir", "onnxscript", "torch.onnx"):
    logging.getLogger(chatty).setLevel(logging.WARNING)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, float]:
    """Train (and prune) as ``cfg`` says; write outputs into ``output_dir`` (default: Hydra's run dir).

    Returns the final eval metrics (``eval/<name>``), the task's main metric first. Raises
    ``ConfigError`` for bad settings (before anything heavy loads) and ``RunInterrupted`` on
    SIGTERM/SIGINT; either way ``summary.json`` says so.
    """
    out = Path(output_dir) if output_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    started = time.perf_counter()
    with StopOnSignal() as stop:
        try:
            typed = _check(cfg, out)
            finished = completed_run(out) if typed.resume_from_checkpoint == "auto" else None
            if finished is not None:
                # A requeued or repeated command: starting over would replace the finished results.
                print(f"prunelab: {out} holds a completed run (see its {SUMMARY}); nothing to resume")
                return finished["metrics"]
            resume_from = _claim(typed, out)
        except ConfigError as error:
            _record_refusal(cfg, out, error)
            raise
        cfg = typed
        join_submitit_tasks()
        # cpu=True where no accelerator exists: only then does accelerate take torchrun's
        # processes as one data-parallel group (gloo) instead of N independent runs.
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.accelerator.is_available())
        summary = RunSummary(out, writes=accelerator.is_main_process, **_describe(cfg))
        if resume_from is not None:
            summary.update(notes=[f"resumed from {resume_from} (step {read_position(resume_from).step})"])
        ignored = {} if cfg.do_prune else _preset_pruning_keys(cfg)
        if ignored:
            keys = ", ".join(f"{key}={value}" for key, value in ignored.items())
            summary.update(notes=[*summary.fields["notes"], f"do_prune=false: no effect from the preset's {keys}"])
        try:
            summary.write()
            if accelerator.is_main_process:
                write_text_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
            set_seed(cfg.seed)
            state = RunState(cfg, out, accelerator, summary, stop, resume_from=resume_from)
            for stage in STAGES:
                stage(state)
        except RunInterrupted as interrupt:
            summary.write(status="preempted", error=f"{interrupt}", wall_time_s=time.perf_counter() - started)
            raise
        except BaseException as error:
            summary.write(status="failed", error=_one_line(error), wall_time_s=time.perf_counter() - started)
            raise
    summary.write(status="completed", wall_time_s=time.perf_counter() - started)
    if summary.writes:
        _print_summary(summary.fields)
    return state.metrics


def _check(cfg: DictConfig, out: Path) -> DictConfig:
    """The checked config; the run directory exists and is writable."""
    typed = check_config(cfg)
    if HydraConfig.initialized() and HydraConfig.get().mode != RunMode.MULTIRUN:
        check_inert_overrides(typed, list(HydraConfig.get().overrides.task))
    check_pruning(typed)
    build(typed.quant)  # its own checks (calibration, what the backend can do) before anything loads
    build(typed.export)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output directory {out}: cannot be created ({error.strerror or error})") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output directory {out}: not writable")
    return typed


def _claim(typed: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume from; the run directory made ready: a directory holding another
    run is refused unless resuming or overwriting."""
    resume = typed.resume_from_checkpoint
    checkpoint = find_checkpoint(resume, out) if resume is not None else None
    task_files = get_object(typed.task._target_).output_files  # the files its task declares it writes
    if checkpoint is not None:
        if checkpoint.parent.parent.resolve() != out.resolve():
            raise ConfigError(
                f"resume_from_checkpoint={resume}: a resumed run continues in its own run directory "
                f"{checkpoint.parent.parent}, not {out}"
            )
        check_resumable(checkpoint, OmegaConf.to_yaml(typed, resolve=True), resume)
        truncate_metrics(out, read_position(checkpoint).step)
    elif typed.overwrite_output_dir or resume == "auto":
        clear_outputs(out, task_files)  # auto without a checkpoint: the run starts over
    elif previous_outputs(out, task_files):
        raise ConfigError(
            f"output directory {out} holds a previous run ({', '.join(previous_outputs(out, task_files))}); "
            "set resume_from_checkpoint=<dir> to continue it, overwrite_output_dir=true to replace it, "
            "or choose another hydra.run.dir"
        )
    return checkpoint


def _preset_pruning_keys(cfg: DictConfig) -> dict:
    """The pruning keys whose values differ from those composed without ``experiment=``: what a
    preset set, and a dense run ignores. (Presets may set any key; the command line may not set
    these for a dense run: check_inert_overrides.)"""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    without = [o for o in overrides if o.split("=")[0].lstrip("+~") != "experiment"]
    if GlobalHydra.instance().is_initialized():  # inside the Hydra app: its own search path
        plain = compose("config", overrides=without)
    else:
        with initialize_config_module("prunelab.conf", version_base="1.3"):
            plain = compose("config", overrides=without)
    given, default = _pruning_values(cfg), _pruning_values(plain)
    return {key: value for key, value in given.items() if value != default.get(key)}


def _pruning_values(cfg: DictConfig) -> dict:
    # pruning.target_sparsity follows target_sparsity; the scheduler's keys are its leaves.
    paths = [PRUNING_GROUP_KEYS.get(key, key) for key in PRUNING_ONLY_KEYS
             if key != "pruning.target_sparsity" and not key.startswith("scheduler")]
    values = {path: OmegaConf.select(cfg, path) for path in paths}
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    return {**values, **{f"scheduler.{key}": value for key, value in scheduler.items()}}


def _record_refusal(cfg: DictConfig, out: Path, error: ConfigError) -> None:
    """A ``failed`` summary.json for a config refused at once, where that destroys nothing: the
    directory must exist, be writable and hold no previous run (and only process 0 writes). Every
    run writes summary.json first, so RUN_OUTPUTS tell a previous run without importing the task of
    an unchecked config."""
    if int(os.environ.get("RANK", "0")) != 0 or not out.is_dir() or previous_outputs(out) or not os.access(out, os.W_OK):
        return
    RunSummary(out, **_describe(cfg)).write(status="failed", error=f"ConfigError: {error}")


def _describe(cfg: DictConfig) -> dict:
    """Summary fields known from the config alone, so even a run refused at once has them. Safe on
    an unchecked config: values are read as given, and unreadable ones are None."""
    def pick(key: str):
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)

    do_prune = pick("do_prune")
    # Groups in pruning_configs override the global pattern; "1x1+4x1" names a mixed recipe.
    groups = pick("pruning.pruning_configs") or [{}]
    patterns = sorted({str(group.get("pattern", pick("pruning.pattern"))) for group in groups})
    return {
        "task": pick("task.name") or _choice("task"),
        "model": pick("model.name"),
        "model_name_or_path": pick("model.name_or_path"),
        "do_prune": do_prune,
        "pattern": "+".join(patterns) if do_prune else None,
        "pruning_type": pick("pruning.pruning_type") if do_prune else None,
        # A lock keeps the zeros there are: no target applies.
        "target_sparsity": pick("target_sparsity") if do_prune and not locks_existing_zeros(pick("pruning.pruning_type")) else None,
        "seed": pick("seed"),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }


def _choice(group: str) -> str | None:
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}"


def _print_summary(fields: dict) -> None:
    main = fields["main_metric"]
    others = ", ".join(f"{k} {v:.4f}" for k, v in fields["metrics"].items() if k != main)
    recipe = f"{fields['pattern']} {fields['pruning_type']} @ {fields['target_sparsity']}" if fields["do_prune"] else "dense"
    sparsity = fields["sparsity"]["pruned_ops_sparsity"]
    print(
        f"\nprunelab: {fields['task']} / {fields['model']} / {recipe}: {main} {fields['metrics'][main]:.4f}"
        f"{' (' + others + ')' if others else ''}; measured sparsity of pruned ops {sparsity:.4f}; "
        f"{fields['wall_time_s']:.0f} s\noutputs: {fields['output_dir']}"
    )
    quantized = fields["quantization"]
    if quantized:
        size = f", {quantized['size_bytes'] / 1e6:.1f} MB ({quantized['size_bytes'] / quantized['float_size_bytes']:.2f}x)" \
            if quantized["size_bytes"] else ""
        print(f"int8 ({quantized['approach']}): {main} {quantized['metrics'][main]:.4f}{size}")

"""The named stages of one run, in order:

    setup_model -> setup_task -> load_model -> setup_data -> setup_training -> fit -> post_training
    -> quantize -> save -> export

Each takes the ``RunState`` built so far and adds what it makes. Training changes are set up in
``setup_training`` as peers: quantization-aware training wraps the model's Linear layers,
distillation and pruning are callbacks of the training loop.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

import prunelab
from prunelab.app import trained_examples
from prunelab.app.config import build, to_input_path
from prunelab.app.inc_recipe import read_pruning_config
from prunelab.app.quantization import QUANTIZED_DIR, check_reload
from prunelab.app.schema import checkpoint_every
from prunelab.errors import ConfigError
from prunelab.outputs import METRICS, RunSummary, append_jsonl, save_model
from prunelab.sparsity.config import PruningConfig, calibrated
from prunelab.sparsity.criteria import CRITERIA
from prunelab.train.checkpointing import CHECKPOINTS, CheckpointPolicy
from prunelab.train.evaluation import predict
from prunelab.train.hook_timer import HookTimer
from prunelab.train.interrupts import StopOnSignal
from prunelab.train.loop import Evaluation, Trainer, TrainConfig, no_decay_patterns
from prunelab.train.pruning_window import PruningSteps

# Reloaded-model logits must match the trained model's to this tolerance (float32 eval).
VERIFY_ATOL = 1e-4
# Engine step keys the scheduler derives from the pruning window unless the config gives them.
STEP_KEYS = ("start_step", "end_step", "pruning_frequency", "sparsity_decay_type")
# Window keys that say the same as the step keys (and so cannot be set together with them).
WINDOW_KEYS = {"start_step": "sparsity_warm_epochs", "end_step": "cooldown_epochs", "pruning_frequency": "pruning_frequency"}
# Steps per epoch assumed when the pruning config is checked before the data is loaded: more than
# any run has, so only what holds for every run length is refused then (a window derived from the
# real count is checked again once the data is loaded; a smaller guess refused long runs that fit).
PLACEHOLDER_STEPS_PER_EPOCH = 10**9


@dataclass
class RunState:
    """What the stages share; each stage fills in its part."""

    cfg: DictConfig
    out: Path
    accelerator: Any
    summary: RunSummary
    stop: StopOnSignal
    resume_from: Path | None = None
    source: Any = None
    start_points: dict[str, str] = field(default_factory=dict)  # config key -> the model directory it names
    tokenizer: Any = None
    task: Any = None
    data: Any = None
    model: Any = None
    trainer: Trainer | None = None
    callbacks: list = field(default_factory=list)
    pruning: Any = None
    gradient_steps: int = 0  # passes before a one-shot prune that precedes training (num_train_epochs=0; wanda, sparsegpt)
    hook_timer: HookTimer | None = None  # the pruning engine as the loop sees it, timed
    measurement: Any = None
    quantization: Any = None
    quantized: Any = None
    final: Evaluation | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def pruning_keys(cfg: DictConfig) -> dict:
    """``cfg.pruning`` with the keys of ``pruning_config`` (an INC recipe file) on top."""
    keys = OmegaConf.to_container(cfg.pruning, resolve=True)
    if cfg.pruning_config is not None:
        keys.update(read_pruning_config(to_input_path(cfg.pruning_config)))
    return keys


def engine_config(cfg: DictConfig, steps_per_epoch: int, examples_per_step: int | None = None) -> dict:
    """The pruning engine's config: the pruning keys, plus the step keys the scheduler derives
    from the pruning window where the config does not give them itself. ``examples_per_step``:
    training examples per step over all processes (default: one process's batch)."""
    keys = pruning_keys(cfg)
    examples_per_step = examples_per_step or cfg.per_device_train_batch_size
    pruner = _calibrated_criterion(keys)
    if cfg.do_prune and pruner is not None:
        return _prune_before_training(cfg, keys, pruner, examples_per_step)
    given = [key for key in STEP_KEYS if key in keys]
    defaults = {"sparsity_warm_epochs": 0, "cooldown_epochs": 0, "pruning_frequency": None}
    for key in given:
        window = WINDOW_KEYS.get(key)
        if window is not None and cfg[window] != defaults[window]:
            raise ConfigError(
                f"pruning.{key}={keys[key]} and {window}={cfg[window]} both say when pruning happens; keep one"
            )
    if cfg.num_train_epochs == 0 and not cfg.do_prune:
        return keys  # evaluation only: no window
    steps = PruningSteps(steps_per_epoch, cfg.num_train_epochs, cfg.sparsity_warm_epochs, cfg.cooldown_epochs,
                         gradient_steps=prune_only_steps(keys) if cfg.num_train_epochs == 0 else 0)
    derived = build(cfg.scheduler).engine_keys(steps, cfg.pruning_frequency) if len(given) < len(STEP_KEYS) else {}
    return {**keys, **{k: v for k, v in derived.items() if k not in given}}


# A one-shot window as long as any criterion could ask for (parsing keys before the steps are known).
_ONE_SHOT_PLACEHOLDER = {"start_step": 2**31, "end_step": 2**31, "pruning_frequency": 1}


def prune_only_steps(keys: dict, examples_per_step: int = 1) -> int:
    """The passes the criterion needs before its one-shot prune (num_train_epochs=0; wanda and
    sparsegpt also before training): gradient steps, or ceil(calibration_samples / examples_per_step)
    forward passes."""
    parsed = _parse_engine_config({**keys, **_ONE_SHOT_PLACEHOLDER})
    return prunelab.sparsity.calibration_steps(parsed, examples_per_step)


def _calibrated_criterion(keys: dict) -> str | None:
    """The criterion of the pruning keys (global or of a group) that prunes from calibration
    inputs (wanda, sparsegpt), if any; read before the keys are validated."""
    named = [keys.get("pruning_type"), *(g.get("pruning_type") for g in keys.get("pruning_configs") or [] if isinstance(g, dict))]
    for name in named:
        criterion = CRITERIA.get(name.removesuffix("_progressive")) if isinstance(name, str) else None
        if criterion is not None and criterion.calibrated:
            return criterion.name
    return None


def _prune_before_training(cfg: DictConfig, keys: dict, pruner: str, examples_per_step: int) -> dict:
    """wanda, sparsegpt: the one-shot prune at the end of the calibration passes, which run before
    training (or instead of it); the masks then stay while the model fine-tunes."""
    why = f"pruner={pruner} (it prunes once, from calibration passes, before training)"
    if not build(cfg.scheduler).one_shot:
        raise ConfigError(f"scheduler: {why} needs scheduler=oneshot")
    given = [key for key in STEP_KEYS if key in keys]
    if given:
        raise ConfigError(f"pruning.{given[0]}={keys[given[0]]}: has no effect with {why}; drop it")
    if cfg.sparsity_warm_epochs:
        raise ConfigError(f"sparsity_warm_epochs={cfg.sparsity_warm_epochs}: has no effect with {why}; drop it")
    steps = prune_only_steps(keys, examples_per_step)
    return {**keys, "start_step": steps, "end_step": steps, "pruning_frequency": 1}


def check_pruning(cfg: DictConfig) -> None:
    """The engine's keys checked before any model or data loads (steps per epoch not yet known)."""
    if cfg.do_prune:
        _parse_engine_config(engine_config(cfg, PLACEHOLDER_STEPS_PER_EPOCH))


def _parse_engine_config(config: dict, total_steps: int | None = None):
    """The engine's parsed config; its ``ValueError`` as one ``ConfigError`` line (with the run's
    length when known: a window derived from too few steps names keys the user never set)."""
    try:
        return prunelab.sparsity.parse_config(config)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        length = f" (this run has {total_steps} optimizer steps)" if total_steps is not None else ""
        raise ConfigError(f"pruning: {error}{length}") from None


def setup_model(state: RunState) -> None:
    state.source = build(state.cfg.model)
    state.summary.update(model_name_or_path=state.source.source)
    state.tokenizer = state.source.load_tokenizer()


def setup_task(state: RunState) -> None:
    cfg = state.cfg
    state.task = build(
        cfg.task,
        data_root=to_input_path(cfg.data_root) if cfg.data_root else None,
        max_length=cfg.max_length,
        max_train_samples=cfg.max_train_samples,
        max_eval_samples=cfg.max_eval_samples,
        seed=cfg.seed,
    )
    state.summary.update(task=state.task.name, task_family=state.task.family,
                         main_metric=f"eval/{state.task.main_metric}", greater_is_better=state.task.greater_is_better)
    _check_input_fits(state.task, state.source)  # before tokenizing, which takes minutes on SQuAD


def load_model(state: RunState) -> None:
    """The starting model, before the data (tokenizing takes minutes on SQuAD): what only the
    model can show wrong in the config is told first."""
    state.model = state.source.load_model(state.task.auto_model_class(), **state.task.model_kwargs())
    no_decay_patterns(state.model, state.cfg.no_decay_modules)


def setup_data(state: RunState) -> None:
    with state.accelerator.main_process_first():
        state.data = state.task.load(state.tokenizer)
    state.summary.add_notes(*state.data.notes)


def setup_training(state: RunState) -> None:
    """What changes the model's training, in this order: the distiller (its default teacher
    is a copy of the starting model, taken before anything touches it), quantization-aware
    training (it wraps Linear layers before the optimizer and the pruning engine see them), the
    training loop, the pruning engine."""
    cfg, task = state.cfg, state.task
    distiller = build(cfg.distill)(task=task, student=state.model)
    state.start_points = {"model.name_or_path": state.source.source}
    if distiller is not None and distiller.teacher_source is not None:
        state.start_points["distill.teacher"] = distiller.teacher_source
    trained_examples.check(state.start_points, state.data.eval_examples)
    state.quantization = build(cfg.quant)
    state.quantization.prepare(state.model)
    # The distiller's parameters (simkd's projector), if any, train in the trainer's optimizer.
    state.trainer = Trainer(state.model, task, state.data, _train_config(cfg), state.accelerator, callbacks=[distiller])
    examples_per_step = cfg.per_device_train_batch_size * state.accelerator.num_processes
    config = engine_config(cfg, state.trainer.steps_per_epoch, examples_per_step)
    # Parsed once, here; every use below reads this parse.
    parsed = _parse_engine_config(config, state.trainer.total_steps) if cfg.do_prune else None
    # wanda, sparsegpt: calibration passes and the prune come before training, outside its steps
    prunes_first = cfg.do_prune and calibrated(parsed)
    if cfg.do_prune and cfg.num_train_epochs and not prunes_first:  # without training its steps are gradient passes
        _check_steps_fit(parsed, state.trainer.total_steps)
    state.pruning = _prepare_pruning(parsed, state.model) if cfg.do_prune else None
    if cfg.do_prune and build(cfg.scheduler).lr_rewinding:
        state.trainer.rewind_learning_rate(state.pruning.pruning_steps())
    state.gradient_steps = config["start_step"] if cfg.do_prune and (cfg.num_train_epochs == 0 or prunes_first) else 0
    _note_repeated_batches(state)
    state.measurement = state.pruning or _dense_measurement(config, state.model)
    state.hook_timer = HookTimer(state.pruning) if state.pruning is not None else None
    state.callbacks = [c for c in (distiller, state.hook_timer) if c is not None]


def _note_repeated_batches(state: RunState) -> None:
    """A prune before training that takes more passes than the training set has batches sees each
    batch several times: said in summary.json, since the criterion's defaults (obs: 1024 gradients)
    assume a large training set."""
    batches = len(state.trainer.train_loader)
    if state.gradient_steps > batches:
        note = (f"the prune before training takes {state.gradient_steps} passes over training batches, but this "
                f"process has {batches} per epoch: each batch is used up to {-(-state.gradient_steps // batches)} "
                f"times (reshuffled each epoch); the pruner's keys that set the passes (pruning.obs.num_grads, "
                f"pruning.calibration_samples) give fewer")
        state.summary.add_notes(note)


def fit(state: RunState) -> None:
    cfg, out, accelerator = state.cfg, state.out, state.accelerator
    every = checkpoint_every(cfg.checkpointing_steps)
    policy = CheckpointPolicy(out / CHECKPOINTS, every, cfg.checkpoints_to_keep) if every is not None else None

    def log_evaluation(evaluation: Evaluation) -> None:
        if state.pruning is not None:
            _check_masks_agree(accelerator, state.pruning)
        if accelerator.is_main_process:
            record = {"epoch": evaluation.epoch, "step": evaluation.step, **evaluation.metrics}
            record["sparsity"] = state.measurement.report()["pruned_ops_sparsity"]
            if state.hook_timer is not None:
                record["pruning_s"] = round(state.hook_timer.lap(), 3)  # inside the pruning hooks since the last line
            append_jsonl(out / METRICS, record)

    state.final = state.trainer.fit(
        callbacks=state.callbacks, on_evaluate=log_evaluation, checkpoints=policy,
        resume_from=state.resume_from, stop=state.stop, gradient_steps=state.gradient_steps,
    )


def post_training(state: RunState) -> None:
    """Final metrics and the measured sparsity into the summary; task prediction files."""
    main = f"eval/{state.task.main_metric}"
    metrics = state.final.metrics
    state.metrics = {main: metrics[main], **{k: v for k, v in metrics.items() if k.startswith("eval/") and k not in (main, "eval/loss")}}
    state.summary.write(metrics=state.metrics, sparsity=state.measurement.report())
    if state.accelerator.is_main_process:
        state.task.write_predictions(state.final.logits, state.data, state.out)


def quantize(state: RunState) -> None:
    """The int8 model, made and evaluated on the eval set by the main process alone. Every process
    takes its fake quantization off (qat) right after conversion, so the float model saves as a
    stock one."""
    quantization, model = state.quantization, state.accelerator.unwrap_model(state.trainer.model)
    if not quantization.enabled:
        return
    main = state.accelerator.is_main_process
    if main:
        # The int8 model runs on CPU (OpenVINO): convert a CPU copy of a model trained elsewhere.
        on_cpu = state.accelerator.device.type == "cpu"
        state.quantized = quantization.convert(model if on_cpu else copy.deepcopy(model).cpu(), _calibration_loader(state))
    quantization.release(model)
    if main:
        state.summary.write(quantization={
            "approach": quantization.approach, "metrics": _evaluate(state, state.quantized), "size_bytes": None,
            "float_size_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        })


def save(state: RunState) -> None:
    """The float model, and the int8 one if any, saved by the main process alone (no collective
    call: the others would hang), each whole or not at all and checked after reloading."""
    cfg = state.cfg
    if cfg.save_model and state.accelerator.is_main_process:
        verify = _logit_check(state) if cfg.verify_loading else None
        record = trained_examples.carried(state.start_points, state.data.carved_train_examples)
        files = {trained_examples.FILE: record} if record is not None else {}
        save_model(state.accelerator.unwrap_model(state.trainer.model), state.tokenizer, state.out, verify, files)
        if state.quantized is not None:
            directory = state.quantized.save(state.out / QUANTIZED_DIR, overwrite=True)
            if cfg.verify_loading:
                check_reload(directory, state.quantized, _eval_loader(state))
            record = dict(state.summary.fields["quantization"], size_bytes=state.quantized.size_bytes)
            state.summary.write(quantization=record)
    state.accelerator.wait_for_everyone()


def export(state: RunState) -> None:
    """The compacted model, ONNX and latencies from the saved model (main process alone)."""
    exporter = build(state.cfg.export)
    if exporter.enabled and state.accelerator.is_main_process:
        quantization = state.quantization
        # QAT's int8 ranges were learned in the uncompacted layers: its int8 model is quantized/.
        int8 = (lambda model: quantization.convert(model, _calibration_loader(state))) \
            if quantization.converts_compacted else None
        report = exporter.run(state.out, int8=int8, evaluate=lambda model: _evaluate(state, model))
        parameters = report["parameters"]
        note = (f"export: {state.out / 'export'}, parameters {parameters['before']} -> "
                f"{parameters['after']} ({parameters['ratio']:.3f}x)")
        if report["quantized"] is not None:
            note += f"; int8 ({report['quantized']['approach']}) of the compacted model in export/quantized"
        elif quantization.enabled:
            note += (f"; quant={quantization.approach}: the int8 model is quantized/ (uncompacted; the openvino export "
                     "backend, with quant=dynamic|static, makes the compacted one)")
        state.summary.add_notes(note)
    state.accelerator.wait_for_everyone()


STAGES = (setup_model, setup_task, load_model, setup_data, setup_training, fit, post_training, quantize, save, export)


def _calibration_loader(state: RunState) -> DataLoader:
    """Training batches in a fixed order: what static quantization calibrates on."""
    return DataLoader(state.data.train, batch_size=state.cfg.per_device_eval_batch_size, collate_fn=state.data.collator)


def _evaluate(state: RunState, model) -> dict:
    """``eval/<metric>`` of a model-like callable (torch or int8) on the run's eval set, on CPU."""
    logits, _ = predict(model, _eval_loader(state), state.task, device="cpu")
    return {f"eval/{k}": v for k, v in state.task.compute_metrics(logits, state.data).items()}


def _check_input_fits(task, source) -> None:
    """Inputs longer than the model's position table would fail deep inside its first forward."""
    positions = source.max_input_tokens()
    key, length = task.input_length()
    if positions is not None and length > positions:
        raise ConfigError(f"{key}={length}: longer than the {positions} tokens the model's position embeddings hold; give at most {positions}")


def _check_steps_fit(config: PruningConfig, total_steps: int) -> None:
    """Step keys given by hand (or by a recipe file) must fall inside this run's training, else the
    target would silently never be reached."""
    for index, group in enumerate(config.groups):
        if group.end_step >= total_steps and group.target_sparsity > 0 and not group.locks_existing_zeros:
            where = f"pruning_configs[{index}]." if len(config.groups) > 1 else ""
            raise ConfigError(
                f"pruning.{where}end_step={group.end_step}: past the last optimizer step of this run "
                f"({total_steps - 1}; {total_steps} steps in all), so the target would never be reached"
            )


def _prepare_pruning(config: dict | PruningConfig, model):
    try:
        return prunelab.prepare_pruning(model, config)
    except ValueError as error:
        raise ConfigError(f"pruning: {error}") from error


def _dense_measurement(config: dict, model):
    """For dense runs: an engine over the same ops with nothing to prune, whose ``report()`` counts
    zeros exactly as a pruning run's does (no hook is ever called, so the model is untouched)."""
    # magnitude needs no gradients, so the one-shot/step checks of gradient criteria cannot trip.
    targetless = {"target_sparsity": 0.0, "min_sparsity_ratio_per_op": 0.0, "pruning_type": "magnitude"}
    groups = [{**group, **targetless} for group in config.get("pruning_configs", [])]
    return _prepare_pruning({**config, **targetless, "pruning_configs": groups}, model)


def _check_masks_agree(accelerator, pruning) -> None:
    """With several processes, every one must hold the same masks (the same all-reduced gradients
    give the same scores); a difference means the replicas train different models."""
    if accelerator.num_processes == 1:
        return
    masks = [op["mask"].flatten().double() for group in pruning.state_dict()["groups"] for op in group["ops"].values()]
    fingerprint = torch.stack([(mask * torch.arange(1, mask.numel() + 1, dtype=torch.float64)).sum() for mask in masks])
    every = accelerator.gather(fingerprint.to(accelerator.device).unsqueeze(0)).cpu()
    if not torch.equal(every, every[:1].expand_as(every)):
        raise RuntimeError("pruning masks differ between processes: the data-parallel replicas have diverged")


def _eval_loader(state: RunState) -> DataLoader:
    """The whole eval set for this process alone (not sharded; nothing gathered)."""
    return DataLoader(state.data.eval, batch_size=state.cfg.per_device_eval_batch_size, collate_fn=state.data.collator)


def _logit_check(state: RunState):
    """Reload a saved model directory and compare its eval logits with the trained model's, on
    this process alone. After qat the saved model is the float one without fake quantization,
    so its reference logits are measured again."""
    trainer, loader = state.trainer, _eval_loader(state)
    device = trainer.accelerator.device
    model = trainer.accelerator.unwrap_model(trainer.model)
    reference = state.final.logits
    if state.quantization.trains:  # fake quantization was on until release(): measure the float model
        reference, _ = predict(model, loader, trainer.task, device=device)

    def verify(directory: Path) -> None:
        reloaded = trainer.task.auto_model_class().from_pretrained(directory).to(device)
        logits, _ = predict(reloaded, loader, trainer.task, device=device)
        for saved, trained in zip(logits, reference):
            gap = float(np.max(np.abs(saved - trained))) if saved.size else 0.0
            if saved.shape != trained.shape or gap > VERIFY_ATOL:
                raise RuntimeError(
                    f"verify_loading: the reloaded model's eval logits differ from the trained model's "
                    f"(max |diff| {gap:.2e}, shapes {saved.shape} vs {trained.shape}); model left in {directory}"
                )

    return verify


def _train_config(cfg: DictConfig) -> TrainConfig:
    return TrainConfig(
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        weight_decay=cfg.weight_decay,
        no_decay_modules=tuple(cfg.no_decay_modules),
        adam_betas=tuple(cfg.adam_betas),
        lr_scheduler_type=cfg.lr_scheduler_type,
        num_warmup_steps=cfg.num_warmup_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
    )

"""One run, wired explicitly in order: config checks -> model + tokenizer -> task data ->
distiller -> training loop -> pruning engine -> fit -> sparsity report -> saved model -> summary.

``run(cfg)`` returns the final eval metrics; ``python -m prunelab`` is a thin Hydra wrapper over it.
"""
from __future__ import annotations

import time
from pathlib import Path

import datasets
import numpy as np
import transformers
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import prunelab
from prunelab.app.config import build, register_resolvers, to_input_path, validate
from prunelab.errors import ConfigError
from prunelab.outputs import METRICS, RunSummary, append_jsonl, save_model
from prunelab.train.evaluation import predict
from prunelab.train.loop import Evaluation, Trainer, TrainConfig
from prunelab.train.pruning_window import PruningSteps

register_resolvers()
# The run shows one progress bar (training); tokenizing, shard writing and loading stay quiet.
datasets.disable_progress_bars()
transformers.utils.logging.disable_progress_bar()

# Reloaded-model logits must match the trained model's to this tolerance (float32 eval).
VERIFY_ATOL = 1e-4


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, float]:
    """Train (and prune) as ``cfg`` says; write outputs into ``output_dir`` (default: Hydra's run dir).

    Returns the final eval metrics (``eval/<name>``), the task's main metric first.

    A failing run still writes ``summary.json`` with ``status: failed`` and re-raises.
    """
    out = Path(output_dir) if output_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # With several processes (multi-GPU) only the main one writes files.
    summary = RunSummary(out, writes=PartialState().is_main_process, **_describe(cfg))
    summary.write()
    try:
        metrics = _run(cfg, out, summary)
    except BaseException as error:
        summary.write(status="failed", error=_one_line(error), wall_time_s=time.perf_counter() - started)
        raise
    summary.write(status="completed", wall_time_s=time.perf_counter() - started)
    if summary.writes:
        _print_summary(summary.fields)
    return metrics


def _run(cfg: DictConfig, out: Path, summary: RunSummary) -> dict[str, float]:
    validate(cfg)
    set_seed(cfg.seed)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    if accelerator.is_main_process:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")

    source = build(cfg.model)
    summary.update(model_name_or_path=source.source)
    tokenizer = source.load_tokenizer()

    task = build(
        cfg.task,
        data_root=to_input_path(cfg.data_root) if cfg.data_root else None,
        max_length=cfg.max_length,
        max_train_samples=cfg.max_train_samples,
        max_eval_samples=cfg.max_eval_samples,
        seed=cfg.seed,
    )
    summary.update(task=task.name, task_family=task.family, main_metric=f"eval/{task.main_metric}")
    with accelerator.main_process_first():
        data = task.load(tokenizer)
    summary.write(notes=list(data.notes))

    model = source.load_model(task.auto_model_class(), **task.model_kwargs())
    # The default teacher is the starting model, so it is copied before any pruning touches it.
    distiller = build(cfg.distill)(task=task, student=model)
    trainer = Trainer(model, task, data, _train_config(cfg), accelerator)
    engine_config = _engine_config(cfg, trainer.steps_per_epoch)
    pruning = _setup_pruning(engine_config, model) if cfg.do_prune else None
    measurement = pruning or _dense_measurement(engine_config, model)

    def log_evaluation(evaluation: Evaluation) -> None:
        if accelerator.is_main_process:
            record = {"epoch": evaluation.epoch, "step": evaluation.step, **evaluation.metrics}
            record["sparsity"] = measurement.report()["pruned_ops_sparsity"]
            append_jsonl(out / METRICS, record)

    final = trainer.fit(callbacks=pruning, distiller=distiller, on_evaluate=log_evaluation)
    main = f"eval/{task.main_metric}"
    eval_metrics = {main: final.metrics[main]}
    eval_metrics.update({k: v for k, v in final.metrics.items() if k.startswith("eval/") and k != "eval/loss"})
    summary.write(metrics=eval_metrics, sparsity=measurement.report())

    if accelerator.is_main_process:
        task.write_predictions(final.logits, data, out)
        if cfg.save_model:
            verify = _logit_check(trainer, final) if cfg.verify_loading else None
            save_model(accelerator.unwrap_model(trainer.model), tokenizer, out, verify)
    return eval_metrics


def _engine_config(cfg: DictConfig, steps_per_epoch: int) -> dict:
    """``cfg.pruning`` plus the step keys the scheduler derives from the pruning window."""
    engine_config = OmegaConf.to_container(cfg.pruning, resolve=True)
    steps = PruningSteps(steps_per_epoch, cfg.num_train_epochs, cfg.sparsity_warm_epochs, cfg.cooldown_epochs)
    engine_config.update(build(cfg.scheduler).engine_keys(steps, cfg.pruning_frequency))
    return engine_config


def _setup_pruning(engine_config: dict, model):
    try:
        return prunelab.prepare_pruning(model, engine_config)
    except ValueError as error:
        raise ConfigError(f"pruning: {error}") from error


def _dense_measurement(engine_config: dict, model):
    """For dense runs: an engine over the same ops with nothing to prune, whose ``report()`` counts
    zeros exactly as a pruning run's does (no hook is ever called, so the model is untouched)."""
    # magnitude needs no gradients, so the one-shot/step checks of gradient criteria cannot trip.
    targetless = {"target_sparsity": 0.0, "min_sparsity_ratio_per_op": 0.0, "pruning_type": "magnitude"}
    return _setup_pruning(
        {
            **engine_config,
            **targetless,
            "pruning_configs": [{**group, **targetless} for group in engine_config["pruning_configs"]],
        },
        model,
    )


def _logit_check(trainer: Trainer, final: Evaluation):
    """Reload a saved model directory and compare its eval logits with the trained model's."""
    def verify(directory: Path) -> None:
        reloaded = trainer.task.auto_model_class().from_pretrained(directory).to(trainer.accelerator.device)
        logits, _ = predict(reloaded, trainer.eval_loader, trainer.task, trainer.accelerator)
        for saved, trained in zip(logits, final.logits):
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
        adam_betas=tuple(cfg.adam_betas),
        lr_scheduler_type=cfg.lr_scheduler_type,
        num_warmup_steps=cfg.num_warmup_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
    )


def _describe(cfg: DictConfig) -> dict:
    """Summary fields known from the config alone (so even a run failing at once has them)."""
    pruning = cfg.pruning
    # Groups in pruning_configs override the global pattern; "1x1+4x1" names a mixed recipe.
    groups = pruning.pruning_configs or [{}]
    patterns = sorted({group.get("pattern", pruning.pattern) for group in groups})
    return {
        "task": OmegaConf.select(cfg, "task.name") or _choice("task"),
        "model": cfg.model.name,
        "model_name_or_path": OmegaConf.select(cfg, "model.name_or_path", default=None, throw_on_resolution_failure=False),
        "do_prune": bool(cfg.do_prune),
        "pattern": "+".join(patterns) if cfg.do_prune else None,
        "pruning_type": pruning.pruning_type if cfg.do_prune else None,
        "target_sparsity": float(cfg.target_sparsity) if cfg.do_prune else None,
        "seed": int(cfg.seed),
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

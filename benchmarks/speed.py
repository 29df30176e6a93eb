"""Speed of the pruning engine on a BERT-mini shape; prints one JSON object.

    python benchmarks/speed.py                       # prunelab only
    /work/venv-inc/bin/python benchmarks/speed.py --backend both 2>/dev/null
        # prunelab and INC 2.6 (venv from shared/tools/install-inc.sh) in one process, every
        # phase interleaved between them so both see the same machine load

Model: BertForSequenceClassification from a config (4 layers, hidden 256, 4 heads, intermediate
1024, random init), batch 16 x 128 tokens, AdamW, 2 threads; every Linear except classifier and
pooler is pruned (24 ops, 3.15M weights). Per pattern it reports

* ``dense_step_ms`` / ``pruned_step_ms``: medians of interleaved training steps on the same model
  without and with the hook calls, on steps that are inside the pruning window but not mask
  updates (masks present, scores accumulating: the most a non-update step costs);
* ``hooks_ms``: the three hook calls of such a step timed alone, and ``overhead_pct`` =
  hooks_ms / dense_step_ms (robust to the step-to-step noise of a shared machine);
* ``update_ms``: one mask update timed alone (median): the schedule's last update, from the
  previous update's mask (exp decay: 0.55 for a 0.8 target) to the target, as in iterative pruning;
* ``update_step_ms``: a full training step whose ``on_step_begin`` performs that update;
* ``measured_sparsity``: zeros counted in the pruned ops' weights after the update.

Each time also comes as ``*_cpu_ms``: CPU seconds of the process. On a machine shared with other
jobs, wall times with 2 threads swing by 10x (a thread descheduled mid-op stalls the other);
``--threads 1`` CPU times are what the work itself costs and stay put.

``--base`` adds the isolated update time on a BERT-base shape (12 layers, hidden 768: 72 ops,
85M weights) to show how the cost grows with model size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("4x1", "snip_momentum", 0.8), ("2:4", "snip_momentum", 0.5), ("1x1", "magnitude", 0.9), ("1xchannel", "snip_momentum", 0.8)]
MINI = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
BASE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
# Updates at steps 0 (prunes nothing), 1000 and 2000 (the target); 1500 is a scoring, non-update step.
START, FREQUENCY, END = 0, 1000, 2000
PREVIOUS_STEP, QUIET_STEP, UPDATE_STEP = 1000, 1500, END


def engine_keys(pattern: str, pruning_type: str, target: float) -> dict:
    return {
        "target_sparsity": target,
        "pruning_type": pruning_type,
        "pattern": pattern,
        "op_names": [],
        "excluded_op_names": ["classifier", "pooler"],
        "pruning_op_types": ["Linear"],
        "start_step": START,
        "end_step": END,
        "pruning_frequency": FREQUENCY,
        "pruning_scope": "global",
        "sparsity_decay_type": "exp",
    }


class PrunelabBackend:
    name = "prunelab"

    def __init__(self, model, pattern, pruning_type, target):
        sys.path.insert(0, REPO)
        import prunelab

        self.pruning = prunelab.prepare_pruning(model, engine_keys(pattern, pruning_type, target))
        self.pruning.on_train_begin()
        self.group = self.pruning.groups[0]
        self.target = target
        self.ops = len(self.group.ops)
        self.weights = self.group.numel

    def at(self, step):
        self.pruning.step = step

    def on_step_begin(self):
        self.pruning.on_step_begin(self.pruning.step)

    def on_before_optimizer_step(self):
        self.pruning.on_before_optimizer_step()

    def on_after_optimizer_step(self):
        self.pruning.on_after_optimizer_step()

    def reset_masks(self):
        """Masks as the previous update left them."""
        for op in self.group.ops:
            op.mask.fill_(1.0)
            op.pruned_units = 0
        self.group.update_masks(self.group.schedule.sparsity_at(PREVIOUS_STEP), PREVIOUS_STEP)

    def update(self):
        self.group.update_masks(self.target, UPDATE_STEP)

    def pruned_weights(self):
        return [op.weight for op in self.group.ops]


class IncBackend:
    name = "inc-2.6"

    def __init__(self, model, pattern, pruning_type, target):
        from neural_compressor.training import WeightPruningConfig, prepare_compression

        self.manager = prepare_compression(model, WeightPruningConfig([engine_keys(pattern, pruning_type, target)]))
        self.callbacks = self.manager.callbacks
        self.callbacks.on_train_begin()
        self.pruner = self.callbacks.callbacks_list[0].pruners[0]
        self.ops = len(self.pruner.modules)
        self.weights = sum(m.weight.numel() for m in self.pruner.modules.values())

    def at(self, step):
        self.pruner.global_step = step
        self.pruner.handled_global_step = -1

    def on_step_begin(self):
        self.callbacks.on_step_begin(self.pruner.global_step)

    def on_before_optimizer_step(self):
        self.callbacks.on_before_optimizer_step()

    def on_after_optimizer_step(self):
        self.callbacks.on_after_optimizer_step()

    def reset_masks(self):
        """Masks as the previous update left them."""
        for key in self.pruner.masks:
            self.pruner.masks[key] = torch.ones_like(self.pruner.masks[key])
        self.pruner.current_sparsity_ratio = 0.0
        self.pruner.pattern.keep_mask_layers = {}
        self.pruner.completed_pruned_cnt = self.pruner.total_prune_cnt - 1
        self.at(PREVIOUS_STEP)
        self.pruner.update_masks(PREVIOUS_STEP)

    def update(self):
        self.at(UPDATE_STEP)
        self.pruner.update_masks(UPDATE_STEP)

    def pruned_weights(self):
        return [module.weight for module in self.pruner.modules.values()]


BACKENDS = {"prunelab": PrunelabBackend, "inc": IncBackend}


def build_model(shape: dict, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**shape, num_labels=2))


def make_batch(vocab: int, batch: int = 16, length: int = 128) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, vocab, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=generator),
    }


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 2)


def summarise(samples: dict[str, list[Clock]]) -> dict:
    """``<name>_ms`` (wall) and ``<name>_cpu_ms`` medians, plus the hooks' share of a dense step."""
    result = {}
    for name, clocks in samples.items():
        if clocks:
            result[f"{name}_ms"] = median_ms([c.wall for c in clocks])
            result[f"{name}_cpu_ms"] = median_ms([c.cpu for c in clocks])
    if samples.get("hooks"):
        result["overhead_pct"] = round(100 * result["hooks_ms"] / result["dense_step_ms"], 2)
        result["overhead_cpu_pct"] = round(100 * result["hooks_cpu_ms"] / result["dense_step_cpu_ms"], 2)
    return result


class Clock:
    """Wall and CPU seconds. CPU time (all threads of the process) is what the work costs whatever
    else runs on the machine; with ``--threads 1`` it is the load-independent figure."""

    def __init__(self, wall: float = 0.0, cpu: float = 0.0):
        self.wall, self.cpu = wall, cpu

    def __iadd__(self, other: "Clock") -> "Clock":
        self.wall += other.wall
        self.cpu += other.cpu
        return self


def timed(fn) -> Clock:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Clock(time.perf_counter() - wall, time.process_time() - cpu)


def train_step(model, optimizer, batch, engine=None) -> tuple[Clock, Clock]:
    """One optimizer step; returns (the step's time, the time spent in the hooks)."""
    hooks = Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    if engine:
        hooks += timed(engine.on_step_begin)
    model(**batch).loss.backward()
    if engine:
        hooks += timed(engine.on_before_optimizer_step)
    optimizer.step()
    if engine:
        hooks += timed(engine.on_after_optimizer_step)
    optimizer.zero_grad(set_to_none=True)
    return Clock(time.perf_counter() - wall, time.process_time() - cpu), hooks


def restore(model, snapshot):
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(snapshot[name])


class Run:
    """One backend pruning its own copy of the model (same init, batch and optimizer for all)."""

    def __init__(self, backend_cls, shape, case, train=True):
        self.model = build_model(shape)
        self.snapshot = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.case = case
        self.engine = backend_cls(self.model, *case)
        self.samples = {"update": [], "update_step": [], "dense_step": [], "pruned_step": [], "hooks": []}
        if train:
            self.batch = make_batch(self.model.config.vocab_size)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
            for _ in range(2):  # warm-up; seeds snip_momentum scores from real gradients
                self.engine.at(QUIET_STEP)
                train_step(self.model, self.optimizer, self.batch, self.engine)
        else:  # scores from one step of random gradients
            generator = torch.Generator().manual_seed(2)
            for param in self.model.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            self.engine.at(QUIET_STEP)
            self.engine.on_step_begin()
            self.engine.on_before_optimizer_step()
            self.engine.on_after_optimizer_step()

    def time_update(self):
        restore(self.model, self.snapshot)
        self.engine.reset_masks()
        self.samples["update"].append(timed(self.engine.update))

    def time_steps(self):
        self.samples["dense_step"].append(train_step(self.model, self.optimizer, self.batch)[0])
        self.engine.at(QUIET_STEP)
        step_time, hook_time = train_step(self.model, self.optimizer, self.batch, self.engine)
        self.samples["pruned_step"].append(step_time)
        self.samples["hooks"].append(hook_time)

    def time_update_step(self):
        restore(self.model, self.snapshot)
        self.engine.reset_masks()
        self.engine.at(UPDATE_STEP)
        self.samples["update_step"].append(train_step(self.model, self.optimizer, self.batch, self.engine)[0])

    def result(self) -> dict:
        weights = self.engine.pruned_weights()
        pattern, pruning_type, target = self.case
        result = {
            "pattern": pattern,
            "pruning_type": pruning_type,
            "target_sparsity": target,
            "ops": self.engine.ops,
            "weights": self.engine.weights,
            "measured_sparsity": round(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights), 4),
        }
        result.update(summarise(self.samples))
        return result


def bench_case(backend_classes, case, steps, repeats) -> list[dict]:
    """Each phase alternates between backends, so they share whatever load the machine has."""
    runs = [Run(cls, MINI, case) for cls in backend_classes]
    for _ in range(repeats):
        for run in runs:
            run.time_update()
    for _ in range(steps):
        for run in runs:
            run.time_steps()
    for _ in range(max(2, repeats // 2)):
        for run in runs:
            run.time_update_step()
    return [run.result() for run in runs]


def bench_base_update(backend_classes, case, repeats) -> list[dict]:
    """Isolated updates on BERT-base weights (72 ops, 85M weights)."""
    runs = [Run(cls, BASE, case, train=False) for cls in backend_classes]
    for _ in range(repeats):
        for run in runs:
            run.time_update()
    results = [run.result() for run in runs]
    del runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend", choices=[*sorted(BACKENDS), "both"], default="prunelab",
        help="both: prunelab and INC interleaved in one process (run it with the INC venv's python)",
    )
    parser.add_argument("--steps", type=int, default=8, help="interleaved dense/pruned steps per pattern")
    parser.add_argument("--repeats", type=int, default=7, help="isolated mask updates per pattern")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base", action="store_true", help="also time updates on a BERT-base shape")
    parser.add_argument("--no-mini", action="store_true", help="skip the BERT-mini cases (with --base)")
    parser.add_argument("--patterns", nargs="*", help="subset of: " + " ".join(c[0] for c in CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    backend_classes = list(BACKENDS.values()) if args.backend == "both" else [BACKENDS[args.backend]]
    cases = [c for c in CASES if not args.patterns or c[0] in args.patterns]
    results = {cls.name: [] for cls in backend_classes}
    base = {cls.name: [] for cls in backend_classes}
    mini_cases = [] if args.no_mini else cases
    for case in mini_cases:
        for cls, result in zip(backend_classes, bench_case(backend_classes, case, args.steps, args.repeats)):
            results[cls.name].append(result)
        print(f"done {case[0]}", file=sys.stderr, flush=True)
    if args.base:
        for case in cases:
            for cls, result in zip(backend_classes, bench_base_update(backend_classes, case, max(3, args.repeats // 2))):
                base[cls.name].append(result)
            print(f"done base {case[0]}", file=sys.stderr, flush=True)
    output = {
        "torch": torch.__version__,
        "threads": args.threads,
        "model": "BertForSequenceClassification, random init, " + json.dumps(MINI),
        "batch": "16 x 128, AdamW",
        "results": results,
    }
    if args.base:
        output["bert_base_updates"] = base
    print(json.dumps(output, indent=1))


if __name__ == "__main__":
    main()

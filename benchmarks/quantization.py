"""CPU speed, accuracy proxy and size of int8 BERT-mini against fp32 (prints JSON + a table).

    OMP_NUM_THREADS=1 python benchmarks/quantization.py --threads 1
    python benchmarks/quantization.py --threads 2 --candidates   # + torchao / ONNX Runtime / NNCF if installed
    OMP_NUM_THREADS=1 python benchmarks/quantization.py --sizes --shape minilm-l6   # size + error only, no timing

Model: BERT-mini shape built from config (hidden 256, 4 layers, 4 heads, intermediate 1024,
vocab 30522; ``--shape minilm-l6``: hidden 384, 6 layers, 12 heads, intermediate 1536), random weights, encoder Linear layers pruned 2:4 by magnitude, classifier scaled so
logits are O(1). Inputs: random token ids, batch 32 x 128. Every candidate runs once per round
and the median over rounds is reported, so noise from other processes hits all alike.
Accuracy proxy: max |logit - fp32 logit| (absolute and relative to max |fp32 logit|).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
import time
import warnings

import torch


SHAPES = {
    "bert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    # sentence-transformers/all-MiniLM-L6-v2: half of its 22.7M parameters are word embeddings
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def build(batch: int, length: int, seed: int = 0, shape: str = "bert-mini"):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(**SHAPES[shape], vocab_size=30522, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}":
                groups = module.weight.view(module.weight.shape[0], -1, 4)
                groups.scatter_(-1, groups.abs().argsort(dim=-1)[..., :2], 0.0)
        model.classifier.weight.mul_(50)
    generator = torch.Generator().manual_seed(seed + 1)

    def make():
        return {
            "input_ids": torch.randint(0, config.vocab_size, (batch, length), generator=generator),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
        }

    return model, make(), [make() for _ in range(4)]


def prunelab_candidates(model, inputs, calibration, threads):
    from prunelab.quant import prepare_qat, quantize

    found = {}
    for approach in ("dynamic", "static"):
        int8 = quantize(model, approach, calibration, num_threads=threads)
        found[f"prunelab.quant {approach} (OpenVINO)"] = (lambda m=int8: m(**inputs).logits, int8.size_bytes)
    qat_model = prepare_qat(copy.deepcopy(model)).train()
    with torch.no_grad():  # stands in for fine-tuning: input ranges observed, weights unchanged
        for batch in calibration:
            qat_model(**batch)
    int8 = quantize(qat_model, "qat", calibration, num_threads=threads)
    found["prunelab.quant qat (OpenVINO)"] = (lambda m=int8: m(**inputs).logits, int8.size_bytes)
    return found


def other_candidates(model, inputs, calibration, threads):
    """The libraries compared before choosing OpenVINO; each is skipped when not installed."""
    with tempfile.TemporaryDirectory() as work:  # ONNX Runtime sessions hold their models once made
        return _other_candidates(model, inputs, calibration, threads, work)


def _other_candidates(model, inputs, calibration, threads, work: str) -> dict:
    found = {}
    feed = {k: v.numpy() for k, v in inputs.items()}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = copy.deepcopy(model)
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        found["torchao int8 dynamic (eager)"] = (lambda: ao(**inputs).logits, None)
    except ImportError:
        pass
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

        path = os.path.join(work, "model.onnx")
        torch.onnx.export(model, (inputs["input_ids"], inputs["attention_mask"]), path, input_names=list(inputs),
                          output_names=["logits"], dynamo=True, verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

        def session(p):
            s = ort.InferenceSession(p, options, providers=["CPUExecutionProvider"])
            return lambda: torch.from_numpy(s.run(None, feed)[0])

        found["ONNX Runtime fp32"] = (session(path), None)
        quantize_dynamic(path, dq := os.path.join(work, "dynamic.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        found["ONNX Runtime int8 dynamic"] = (session(dq), os.path.getsize(dq))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{k: v.numpy() for k, v in b.items()} for b in calibration])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(path, sq := os.path.join(work, "static.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])  # U8S8: the default S8S8 QOperator path is 3x slower
        found["ONNX Runtime int8 static (QOperator)"] = (session(sq), os.path.getsize(sq))
    except ImportError:
        pass
    try:
        import nncf
        import openvino as ov

        core = ov.Core()
        ov_model = ov.convert_model(model, example_input=inputs)
        data = nncf.Dataset([{k: v.numpy() for k, v in b.items()} for b in calibration])
        static = nncf.quantize(ov_model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        compiled = core.compile_model(static, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        found["OpenVINO + NNCF int8 static (TRANSFORMER preset)"] = (lambda: torch.from_numpy(compiled(feed)[0]), None)
    except ImportError:
        pass
    return found


def fp32_openvino(model, inputs, threads):
    from prunelab.quant import backend

    compiled = backend.compile_model(backend.convert(model, inputs), {"INFERENCE_NUM_THREADS": threads})
    return lambda: torch.from_numpy(compiled(inputs)[0])


def measure(candidates: dict, reference: torch.Tensor, rounds: int) -> dict:
    times = {name: [] for name in candidates}
    results = {}
    with torch.no_grad():
        for name, (run, size) in candidates.items():
            out = run()
            results[name] = {
                "max_abs_logit_diff": float((out - reference).abs().max()),
                "relative_diff": float((out - reference).abs().max() / reference.abs().max()),
                "size_bytes": size,
            }
        for _ in range(rounds):
            for name, (run, _) in candidates.items():
                start = time.perf_counter()
                run()
                times[name].append(1000 * (time.perf_counter() - start))
    base = statistics.median(times["torch fp32 (eager)"])
    for name in candidates:
        median = statistics.median(times[name])
        results[name].update(median_ms=round(median, 1), speedup_vs_torch_fp32=round(base / median, 2), ms=[round(t) for t in times[name]])
    return results


def sizes(model, inputs, calibration, threads) -> dict:
    """Saved size (all files ``save`` writes) and logit error of every approach, with and without
    int8 embedding tables, against the float model saved as OpenVINO IR (float32)."""
    from prunelab.quant import backend, prepare_qat, quantize
    from prunelab.quant.qat import attach_fake_quant_embeddings

    with tempfile.TemporaryDirectory() as scratch:
        backend.openvino().save_model(backend.convert(model, inputs), os.path.join(scratch, "model.xml"), compress_to_fp16=False)
        float_bytes = sum(os.path.getsize(os.path.join(scratch, f)) for f in ("model.xml", "model.bin"))
    with torch.no_grad():
        reference = model(**inputs).logits
        scale = float(reference.abs().max())
        tables_only = copy.deepcopy(model)
        attach_fake_quant_embeddings(tables_only)  # fp32 everywhere else: the tables' own error
        tables_error = float((tables_only(**inputs).logits - reference).abs().max())
    qat_model = {}
    for embeddings in (True, False):
        qat_model[embeddings] = prepare_qat(copy.deepcopy(model), embeddings=embeddings).train()
        with torch.no_grad():  # stands in for fine-tuning: input ranges observed, weights unchanged
            for batch in calibration:
                qat_model[embeddings](**batch)
    parameters = dict(model.named_parameters())
    rows = {}
    for embeddings in (True, False):
        for approach in ("dynamic", "static", "qat"):
            source = qat_model[embeddings] if approach == "qat" else model
            int8 = quantize(source, approach, calibration, num_threads=threads, embeddings=embeddings)
            error = float((int8(**inputs).logits - reference).abs().max())
            rows[f"{approach}, embeddings={embeddings}"] = {
                "size_bytes": int8.size_bytes, "ratio": int8.size_bytes / float_bytes,
                "max_abs_logit_diff": error, "relative_diff": error / scale,
                "int8_tables": list(int8.quantized_embeddings),
            }
    table_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    setting = {
        "parameters": sum(p.numel() for p in parameters.values()), "embedding_parameters": table_params,
        "float_ir_bytes": float_bytes, "float_state_dict_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "max_abs_fp32_logit": scale, "embeddings_only_max_abs_logit_diff": tables_error,
        "embeddings_only_relative_diff": tables_error / scale,
    }
    print(json.dumps({"setting": setting, "results": rows}, indent=1))
    print(f"\nfloat32 IR {float_bytes / 1e6:.1f} MB; int8 tables alone (torch, rest fp32): {tables_error / scale:.2%} of max logit")
    print("| approach | size MB | vs fp32 | max abs logit diff | relative |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['size_bytes'] / 1e6:.1f} | {r['ratio']:.3f}x | {r['max_abs_logit_diff']:.3f} | {r['relative_diff']:.2%} |")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--candidates", action="store_true", help="also time torchao / ONNX Runtime / NNCF if installed")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bert-mini")
    parser.add_argument("--sizes", action="store_true", help="only saved size and logit error per approach, embeddings on/off")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    model, inputs, calibration = build(args.batch, args.length, shape=args.shape)
    if args.sizes:
        return sizes(model, inputs, calibration, args.threads)
    with torch.no_grad():
        reference = model(**inputs).logits
    candidates = {
        "torch fp32 (eager)": (lambda: model(**inputs).logits, None),
        "OpenVINO fp32": (fp32_openvino(model, inputs, args.threads), None),
    }
    candidates.update(prunelab_candidates(model, inputs, calibration, args.threads))
    if args.candidates:
        candidates.update(other_candidates(model, inputs, calibration, args.threads))
    results = measure(candidates, reference, args.rounds)
    setting = {"threads": args.threads, "batch": args.batch, "length": args.length, "rounds": args.rounds,
               "max_abs_fp32_logit": float(reference.abs().max()), "load_average": os.getloadavg()}
    print(json.dumps({"setting": setting, "results": results}, indent=1))
    print("\n| candidate | median ms | speed-up vs torch fp32 | max abs logit diff | relative |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['median_ms']:.0f} | {r['speedup_vs_torch_fp32']:.2f}x | {r['max_abs_logit_diff']:.2e} | {r['relative_diff']:.2%} |")
    return results


if __name__ == "__main__":
    main()

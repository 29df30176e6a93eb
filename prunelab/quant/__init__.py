"""Quantize what was pruned: int8 models for CPU inference. Hydra-free; torch + OpenVINO.

    from prunelab.quant import prepare_qat, quantize, load_quantized

    prepare_qat(model)                          # only for approach "qat", before fine-tuning
    ...fine-tune (with the pruning engine's hooks)...
    int8 = quantize(model, "static", calibration_batches=train_loader, num_calibration_samples=256)
    int8(**batch).logits; int8.save("out/quantized"); load_quantized("out/quantized")

Approaches: ``dynamic`` (int8 weights, inputs quantized at run time), ``static`` (int8 weights and
inputs, input ranges calibrated), ``qat`` (fake quantization while fine-tuning, then int8).
Weights are symmetric per-channel int8, so pruned zeros stay exactly zero; embedding tables are
int8 per row too (``embeddings=True``, the default). Modules: ``grid`` (the int8 rounding),
``modules`` (FakeQuantLinear, FakeQuantEmbedding), ``qat`` (layer choice, prepare/strip),
``convert`` (torch -> OpenVINO per approach), ``backend`` (OpenVINO specifics), ``artifact``
(QuantizedModel, save/load), ``api`` (quantize), ``benchmark`` (speed/accuracy measurement).
See docs/quantization.md.
"""
from prunelab.quant.api import quantize
from prunelab.quant.artifact import QuantizedModel, QuantizedOutput, load_quantized
from prunelab.quant.config import APPROACHES
from prunelab.quant.modules import FakeQuantEmbedding, FakeQuantLinear
from prunelab.quant.qat import is_qat_prepared, prepare_qat, strip_qat

__all__ = [
    "APPROACHES",
    "FakeQuantEmbedding",
    "FakeQuantLinear",
    "QuantizedModel",
    "QuantizedOutput",
    "is_qat_prepared",
    "load_quantized",
    "prepare_qat",
    "quantize",
    "strip_qat",
]

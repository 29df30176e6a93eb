"""``quantize``: one call from a fine-tuned (pruned) torch model to a ``QuantizedModel``."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from prunelab.errors import ConfigError
from prunelab.quant import backend, convert
from prunelab.quant.artifact import QuantizedModel
from prunelab.quant.config import (
    check_approach,
    check_flag,
    check_num_calibration_samples,
    check_num_threads,
    check_regexes,
)
from prunelab.quant.qat import is_qat_prepared


def quantize(
    model: nn.Module,
    approach: str,
    calibration_batches: Iterable[Mapping] | None = None,
    *,
    num_calibration_samples: int | None = None,
    example_batch: Mapping | None = None,
    op_names: Sequence[str] = (),
    excluded_op_names: Sequence[str] = (),
    num_threads: int | None = None,
    embeddings: bool = True,
) -> QuantizedModel:
    """An int8 copy of ``model`` (the model itself is not changed).

    approach: ``"dynamic"`` int8 weights, inputs quantized at run time; ``"static"`` int8 weights
        and inputs, input ranges from ``calibration_batches``; ``"qat"`` the model prepared with
        ``prepare_qat`` and fine-tuned, converted with the rounding it was trained with.
    calibration_batches: batches as the model takes them (``labels`` may be present). ``static``
        needs them; the first one also fixes the input names of the exported model.
    num_calibration_samples: examples taken from ``calibration_batches`` (None: all of them).
    example_batch: one batch fixing the input names (``input_ids``, ``attention_mask``,
        ``token_type_ids``, ...) when no calibration batch is given.
    op_names / excluded_op_names: regexes choosing the ``nn.Linear`` layers made int8 (the
        pruning engine's rule; default every Linear). For ``qat`` they were fixed by ``prepare_qat``.
    num_threads: CPU threads the compiled model uses (None: OpenVINO's default, all cores).
    embeddings: store the ``nn.Embedding`` tables (word, position, token type) as int8 too,
        symmetric per row with a float32 scale per row, dequantized right before the lookup
        (default; for BERT-family models they are half or more of the weights). False keeps
        them float32. For ``qat`` tables prepared by ``prepare_qat`` are converted as trained.
    """
    approach = check_approach(approach)
    limit = check_num_calibration_samples(num_calibration_samples)
    num_threads = check_num_threads(num_threads)
    op_names = check_regexes("op_names", op_names)
    excluded_op_names = check_regexes("excluded_op_names", excluded_op_names)
    embeddings = check_flag("embeddings", embeddings)
    if approach == "qat" and (op_names or excluded_op_names):
        raise ConfigError("op_names/excluded_op_names: for approach='qat' the layers were chosen by prepare_qat()")
    if approach != "qat" and is_qat_prepared(model):
        raise ConfigError(
            f"approach={approach!r}: the model was prepared with prepare_qat(); use approach='qat' "
            "(or strip_qat(model) first to quantize the float weights)"
        )
    backend.check_backend_can(approach)

    calibration = convert.take_samples(calibration_batches, limit) if calibration_batches is not None else []
    if approach == "static" and not calibration:
        raise ConfigError(
            "calibration_batches: approach='static' needs at least one calibration batch to measure input ranges "
            f"(got {'none' if calibration_batches is None else 'an empty iterable'})"
        )
    if example_batch is not None:
        example = convert.model_inputs(example_batch, "example_batch")
    elif calibration:
        example = calibration[0]
    else:
        example = _default_example(model)

    if approach == "dynamic":
        ov_model, layers, tables = convert.dynamic(model, example, op_names, excluded_op_names, embeddings)
    elif approach == "static":
        ov_model, layers, tables = convert.static(model, calibration, op_names, excluded_op_names, embeddings)
    else:
        ov_model, layers, tables = convert.qat(model, example, embeddings)
    return QuantizedModel(
        ov_model, approach=approach, quantized_layers=layers, quantized_embeddings=tables, num_threads=num_threads
    )


def _default_example(model: nn.Module) -> dict:
    """``input_ids`` + ``attention_mask`` (2 x 8): enough for BERT-family classifiers; a model
    that also needs ``token_type_ids`` etc. must be given an ``example_batch``."""
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 2
    return {
        "input_ids": torch.arange(16, dtype=torch.long).reshape(2, 8) % vocab,
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }

"""ONNX export of a (compacted) transformers encoder and its ONNX Runtime session.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), with the batch
and sequence axes dynamic; if it fails on a model, the TorchScript exporter (``dynamo=False``,
deprecated but still shipped with torch 2.13) is tried, and the file records which one wrote it.
Inputs are the ids the model's ``forward`` takes among ``input_ids``, ``attention_mask`` and
``token_type_ids`` (int64 ``[batch, sequence]``); outputs are the tensors of the model's output
object, by name and in its order (``logits``; ``start_logits``, ``end_logits`` for question
answering; whatever another head returns).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which they go to an external data file


def input_names(model: nn.Module) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    return [name for name in INPUT_NAMES if name in accepted]


def tensor_outputs(outputs) -> dict[str, torch.Tensor]:
    """The tensors of a model's output object, by name, in order. A ModelOutput holds only the
    fields the model set (no ``loss`` without labels), so this works for any task head; what is not
    a tensor (a cache object, a tuple of hidden states) cannot be a graph output and is left out."""
    if not isinstance(outputs, Mapping):
        raise ValueError(f"the model returns {type(outputs).__name__}, not outputs by name (a ModelOutput)")
    named = {name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)}
    if not named:
        raise ValueError(f"the model's {type(outputs).__name__} holds no tensor")
    return named


def as_arrays(outputs) -> list[np.ndarray]:
    """Outputs as float arrays, in order: a ModelOutput or another mapping of tensors (torch,
    OpenVINO), or a sequence of arrays (ONNX Runtime)."""
    if isinstance(outputs, Mapping):
        return [value.detach().cpu().float().numpy() for value in tensor_outputs(outputs).values()]
    return [np.asarray(value) for value in outputs]


def output_names(model: nn.Module, example: dict[str, torch.Tensor]) -> list[str]:
    with torch.no_grad():
        return list(tensor_outputs(model(**example)))


class Outputs(nn.Module):
    """Positional ids in, the named outputs out (a tuple): the graph ONNX sees."""

    def __init__(self, model: nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.outputs = outputs

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        result = self.model(**{name: given[name] for name in self.inputs})
        values = tuple(result[name] for name in self.outputs)
        return values[0] if len(values) == 1 else values


def example_inputs(model: nn.Module, batch: int, sequence: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids in the vocabulary, an attention mask with padding on every other row, zero types."""
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(0, vocab, (batch, sequence), generator=generator)
    mask = torch.ones(batch, sequence, dtype=torch.long)
    mask[1::2, max(1, sequence * 3 // 4) :] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    device = next(model.parameters()).device
    return {name: values[name].to(device) for name in input_names(model)}


def export_onnx(model: nn.Module, path: str | Path, opset: int | None = None, exporter: str = "dynamo") -> dict:
    """Write ``model`` (eval mode) to ``path``; returns ``{"file", "exporter", "inputs", "outputs", ...}``.

    ``exporter``: ``"dynamo"`` (default; falls back to ``"torchscript"`` if it raises) or
    ``"torchscript"``.
    """
    path = Path(path)
    model = model.eval()
    example = example_inputs(model, batch=2, sequence=16)
    names_in = list(example)
    names_out = output_names(model, example)
    wrapper = Outputs(model, names_in, names_out).eval()
    args = tuple(example[name] for name in names_in)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    attempts = ["dynamo", "torchscript"] if exporter == "dynamo" else [exporter]
    failures = []
    for attempt in attempts:
        try:
            _export(wrapper, args, path, names_in, names_out, opset, attempt, weight_bytes > PROTOBUF_LIMIT)
        except Exception as error:  # noqa: BLE001 - the fallback exporter gets its turn
            failures.append(f"{attempt}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            continue
        return {
            "file": path.name,
            "exporter": f"torch.onnx.export(dynamo={attempt == 'dynamo'})",
            "opset": _opset(path),
            "inputs": names_in,
            "outputs": names_out,
            "dynamic_axes": {"0": "batch", "1": "sequence"},
            "fallback_from": failures or None,
        }
    raise RuntimeError("ONNX export failed: " + "; ".join(failures))


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, warnings and log records (e.g. "torchvision is not installed")."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(wrapper, args, path, names_in, names_out, opset, exporter, external) -> None:
    with _quiet():
        if exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(
                wrapper, args, str(path), dynamo=True, input_names=names_in, output_names=names_out,
                opset_version=opset, dynamic_shapes={name: {0: batch, 1: sequence} for name in names_in},
                external_data=external, verbose=False,
            )
        elif exporter == "torchscript":
            torch.onnx.export(
                wrapper, args, str(path), dynamo=False, input_names=names_in, output_names=names_out,
                opset_version=opset or 17, dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names_in},
            )
        else:
            raise ValueError(f"unknown exporter {exporter!r}; choose dynamo or torchscript")


def _opset(path: Path) -> int | None:
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    except Exception:  # noqa: BLE001 - informational only
        return None


def ort_session(path: str | Path, threads: int = 2, spinning: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one inter-op thread).
    spinning=False makes idle threads sleep at once: ONNX Runtime's default keeps them spinning
    after each run, which takes the cores from whatever the process runs next (another runtime)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {name: value.cpu().numpy() for name, value in inputs.items() if name in wanted})


def torch_outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return as_arrays(model(**inputs))


def max_abs_diff(left: list[np.ndarray], right: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(left, right))

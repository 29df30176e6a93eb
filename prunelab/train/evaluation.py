"""Eval-set logits from any model, in dataset order, gathered across processes."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from accelerate.utils import send_to_device

from prunelab.tasks.base import PAD_LOGIT, Task


def predict(model, loader, task: Task, accelerator=None, device=None) -> tuple[tuple[np.ndarray, ...], float | None]:
    """Eval outputs over the whole loader (one array per tensor of ``task.eval_outputs``, each
    batch reduced by the task before it is gathered) and the mean batch loss (None when eval batches carry no targets, as SQuAD's do not).

    With ``accelerator`` the loader is the prepared (sharded) one and results are gathered from
    every process (a collective call: all processes must call it). Without, this process alone
    runs the whole loader on ``device``.
    """
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    losses = []
    with torch.no_grad(), accelerator.autocast() if accelerator is not None else nullcontext():
        for batch in loader:
            if accelerator is None:
                batch = send_to_device(batch, device)
            outputs = model(**batch)
            tensors = list(task.eval_outputs(outputs, batch))
            loss = getattr(outputs, "loss", None)
            if accelerator is not None:
                loss = None if loss is None else accelerator.gather_for_metrics(loss.detach().reshape(1))
                tensors = accelerator.gather_for_metrics(
                    [accelerator.pad_across_processes(t, dim=1, pad_index=PAD_LOGIT) if t.dim() > 1 else t for t in tensors]
                )
            if loss is not None:
                losses.append(loss.float().mean().item())
            parts.append(tuple(t.float().cpu().numpy() for t in tensors))
    logits = tuple(_concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return logits, float(np.mean(losses)) if losses else None


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, [(0, 0), (0, width - a.shape[1]), *[(0, 0)] * (a.ndim - 2)], constant_values=PAD_LOGIT) for a in arrays]
    return np.concatenate(padded)

"""Training batches that remember which examples they hold (so distillation can look up teacher
logits computed once before training, whatever order the shuffled loader picks), and the
per-epoch shuffle that makes the data position of a checkpoint exact."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset, Sampler

EXAMPLE_INDEX = "example_index"


class IndexedDataset(Dataset):
    """Items of ``dataset`` paired with their position in it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, self.dataset[index]


class IndexedCollator:
    """The task's collator over the items, plus ``example_index`` (a LongTensor) in the batch."""

    def __init__(self, collator: Callable):
        self.collator = collator

    def __call__(self, pairs: list[tuple[int, dict]]) -> dict:
        batch = dict(self.collator([item for _, item in pairs]))
        batch[EXAMPLE_INDEX] = torch.tensor([index for index, _ in pairs], dtype=torch.long)
        return batch


class EpochShuffle(Sampler[int]):
    """A new order of the training set every epoch, a pure function of ``(seed, epoch)``: a run
    resumed at any epoch sees exactly the batches an uninterrupted run saw there. The training
    loop calls ``set_epoch`` (through accelerate's loader) before each pass."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

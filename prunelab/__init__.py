"""prunelab: sparsify transformer models during fine-tuning.

The pruning engine is importable without Hydra or any training loop::

    import prunelab
    pruning = prunelab.prepare_pruning(model, config)
"""
from prunelab.sparsity import prepare_pruning

__all__ = ["prepare_pruning"]
__version__ = "0.1.0"

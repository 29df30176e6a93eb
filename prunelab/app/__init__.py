"""The Hydra application: typed config, run directory, the run's named stages, ``run(cfg)``.

The engines (``prunelab.sparsity``, ...) never import this package; it is one user of them."""

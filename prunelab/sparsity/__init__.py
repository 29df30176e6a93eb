"""Placeholder until the engine lands (being written now)."""


def prepare_pruning(model, config):
    raise NotImplementedError("pruning engine not built yet")

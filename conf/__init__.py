"""Hydra configs of prunelab, installed as the package ``prunelab.conf`` (see pyproject.toml):
Hydra reads them through ``pkg://prunelab.conf``, which needs this file."""

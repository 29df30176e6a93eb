"""``python -m prunelab [overrides]``: compose conf/ with Hydra and run one job (or a sweep with -m)."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from prunelab.errors import ConfigError
from prunelab.app.run import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        metrics = run(cfg)
    except ConfigError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and goes on with the rest of the sweep
        print(f"prunelab: error: {error}", file=sys.stderr)
        sys.exit(2)
    return next(iter(metrics.values()))  # run() puts the main metric first; sweepers optimise it


if __name__ == "__main__":
    main()

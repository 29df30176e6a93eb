"""Several processes of one run started by a cluster launcher rather than by torchrun."""
from __future__ import annotations

import os


def join_submitit_tasks() -> None:
    """Under Hydra's submitit launcher with more than one task per job (``hydra.launcher.nodes`` x
    ``tasks_per_node`` > 1), every task runs the same job: give them torch.distributed's variables
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), as torchrun would, so that accelerate
    joins them into one data-parallel run. Does nothing elsewhere or when those are already set."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local") or "RANK" in os.environ:
        return
    import submitit  # present wherever a submitit job runs

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)

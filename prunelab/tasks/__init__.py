"""Fine-tuning tasks: one generic GLUE implementation and SQuAD v1.1/v2."""
from prunelab.tasks.base import Task, TaskData

__all__ = ["Task", "TaskData"]

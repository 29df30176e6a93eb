"""Fine-tuning: the training loop, knowledge distillation and the pruning window."""

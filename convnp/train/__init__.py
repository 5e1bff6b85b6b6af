"""Training: the Trainer, callbacks, checkpoints (safetensors) and metrics."""

"""Training: precision, loss, checkpoints, metrics, the loop and the end-to-end run."""

"""sdft: continual fine-tuning experiments with Self-Distillation Fine-Tuning and its baselines."""

__version__ = "0.1.0"

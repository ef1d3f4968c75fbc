"""flextui: a terminal job console for multi-node PyTorch / DeepSpeed jobs."""

__version__ = "0.1.0"

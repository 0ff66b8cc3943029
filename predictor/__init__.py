"""KServe predictor for HuggingFace Transformers: TorchServe's generalized handler, served natively by KServe."""

__version__ = "0.1.0"

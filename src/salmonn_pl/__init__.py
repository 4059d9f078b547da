"""salmonn-pl: train, evaluate and probe SALMONN-style audio-language models with PyTorch Lightning."""

__version__ = "0.1.0"

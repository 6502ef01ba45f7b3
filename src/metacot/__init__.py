"""metacot: train language models to run search algorithms in their chain of thought."""

__version__ = "0.1.0"

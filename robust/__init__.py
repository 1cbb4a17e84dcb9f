"""robust: harden PyTorch image classifiers against adversarial perturbations and measure how robust they are."""

__version__ = "0.1.0"

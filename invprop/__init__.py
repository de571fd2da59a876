"""invprop: Invariance Propagation (NeurIPS 2020) as a reproducible pipeline."""

__version__ = "0.1.0"

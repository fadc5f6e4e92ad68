"""robust_med: adversarially robust medical-image networks in JAX/Flax."""

__version__ = "0.1.0"

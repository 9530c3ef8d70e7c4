"""probdml: probabilistic deep metric learning (IDML, EL-nivMF) in JAX/Flax."""

__version__ = "0.1.0"

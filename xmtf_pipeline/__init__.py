"""xmtf-pipeline: a T5X-compatible engine that reproduces mT0 on JAX."""

__version__ = "0.1.0"

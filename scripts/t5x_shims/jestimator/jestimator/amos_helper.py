"""``jestimator.amos_helper`` names that T5X reads at import time."""


def state_partition_rule(state, params_axes):
  raise NotImplementedError("jestimator shim (scripts/t5x_shims): no Amos optimizer state")

"""Tools around the engine: benchmarks, the memory planner, data inspection, HLO audits and the demo."""

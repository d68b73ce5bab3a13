"""ecalf: Enhanced CALF, its base CALF, honest baselines and the benchmark protocol."""

__version__ = "0.1.0"

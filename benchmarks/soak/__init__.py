"""A soak test of dualgate: `python -m benchmarks.soak --minutes M` (see run.py and README)."""

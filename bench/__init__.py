"""Hedgerow benchmarks: `python -m bench` lists them, `python -m bench NAME` runs one.

A benchmark is a module `bench/<name>.py` with a docstring (its first line is the
listing) and a function `run() -> Iterable[bench.harness.Figure]`. Every figure carries
the baseline it was compared with *in the same run*, because these machines are noisy:
ratios measured side by side are meaningful, absolute times are not.
"""

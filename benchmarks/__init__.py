"""Benchmarks of lmms-prune on CPU: calibration cost, pruning speed-up, plan-cache load time and
the number of calibration passes of a sweep.

Run ``python -m benchmarks.run [--quick] [--out benchmarks/results]`` from the repository root.
Every comparison is measured side by side in one process (interleaved repetitions, medians), so
the reported numbers are ratios rather than absolute times.
"""

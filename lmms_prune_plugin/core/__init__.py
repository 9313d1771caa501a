"""The harness-neutral core: options, plugins, capture, criteria, strategies, planner, plans, cache, calibration, healing."""

"""The lmms-prune command and what it writes: sweeps, leaderboards, plots."""

"""The one place that cuts: finding decoder layers, removing them exactly, checking checkpoints, exporting."""

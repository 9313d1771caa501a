"""The demo: a small trained Qwen2-VL, its data generators and its lmms-eval tasks.

Everything here exists so that the method can be watched working offline on a CPU; the method
itself (the rest of the package) never imports it except to default to the demo model.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: lmms-eval task folder (``--include_path``): ``prune_calib_*`` calibration sets and the
#: ``prune_demo*`` held-out benchmarks.
TASKS_DIR = str(_HERE / "tasks")
#: The packaged demo checkpoint (``scripts/train_demo.py`` writes it).
DEMO_MODEL_DIR = _HERE / "model_files"

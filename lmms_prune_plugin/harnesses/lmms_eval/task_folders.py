"""lmms-eval task folders (``include_path``), checked the way lmms-eval's TaskManager reads
them, before anything is loaded."""

from __future__ import annotations

import os
from pathlib import Path

_MAX_FOLDER_ENTRIES = 20000  # lmms-eval parses every YAML below an include path
_CHECKED_FOLDERS: dict[str, tuple] = {}


def _yaml_stamp(folder: str) -> tuple:
    """Every YAML below ``folder`` by name, size and mtime: what a re-check would read."""
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".yaml"):
                st = os.stat(os.path.join(root, f))
                found.append((os.path.join(root, f), st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


def check_task_folder(name: str, folder: str) -> None:
    """Every ``*.yaml`` below ``folder`` is read by lmms-eval's TaskManager, which stops at the
    first one that is not a task config with an error naming neither file nor parameter: check
    them now, the way it reads them, and refuse a folder too large to be one of task YAMLs."""
    import os

    from lmms_eval.utils import load_yaml_config

    if not Path(folder).is_dir():
        raise ValueError(f"{name}={folder!r} is not allowed; give an existing task folder")
    if folder in _CHECKED_FOLDERS and _CHECKED_FOLDERS[folder] == _yaml_stamp(folder):
        return  # checked in this process and unchanged since (a sweep loads many times)
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".ipynb_checkpoints")]
        seen += len(files) + len(dirs)
        if seen > _MAX_FOLDER_ENTRIES:
            raise ValueError(
                f"{name}={folder!r} is not allowed: it holds over {_MAX_FOLDER_ENTRIES} files, "
                "and lmms-eval would parse every YAML file in it; give the folder of your task YAMLs"
            )
        for f in sorted(x for x in files if x.endswith(".yaml")):
            path = os.path.join(root, f)
            try:
                ok = isinstance(load_yaml_config(path, mode="simple"), dict)
                why = "it is not a mapping"
            except Exception as err:  # yaml's many error classes, a missing !function file...
                ok, why = False, f"{type(err).__name__}: {str(err).splitlines()[0]}"
            if not ok:
                raise ValueError(
                    f"{name}={folder!r} is not allowed: {path} is not an lmms-eval task YAML "
                    f"({why}); lmms-eval reads every .yaml below {name}: give a folder that holds "
                    "only task YAMLs"
                )
    _CHECKED_FOLDERS[folder] = _yaml_stamp(folder)

"""Peak memory of one forward pass, each measured in a fresh process.

On CPU there is no allocator statistic, so the operating system's view is used: the resident set
size (RSS). A helper process (started with ``python -m benchmarks.memory``, with glibc's mmap
threshold fixed so freed tensor buffers leave RSS at once) imports torch and builds each model
once, single-threaded so that no OpenMP thread pool exists yet, then forks one child per
measurement. Each child:

1. runs a 16-token forward of the same variant, so one-time library allocations (kernel caches,
   thread pools) are not attributed to the measured pass, and returns free heap to the OS;
2. reads its RSS (model + inputs + that state) as the baseline;
3. resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5, then ``VmHWM``), or, where
   that is not allowed, samples RSS from a thread every millisecond;
4. runs the measured forward and reports peak RSS minus the baseline.

A fresh child per (variant, sequence length) means no freed-but-retained heap from an earlier
pass can hide or inflate a later one; forking from the helper avoids paying the imports and the
model initialisation for every measurement.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

MB = 1024 * 1024
CHILD_TIMEOUT_S = 900
# glibc serves blocks above this size with mmap and unmaps them on free. Fixed (the default
# grows after the first large free), every tensor buffer leaves RSS when it dies, so peak RSS
# follows the live tensors instead of what the allocator chose to keep.
MMAP_THRESHOLD = 128 * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


class PeakTracker:
    """Peak RSS over a region: the kernel's high-water mark if it can be reset, else sampling."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs" if self._reset_hwm() else "RSS sampled every 1 ms"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakTracker:
        if self.method.startswith("VmHWM"):
            self._reset_hwm()
        else:
            self._peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, rss_bytes())
        else:
            self._peak = _status_kb("VmHWM") * 1024

    @property
    def peak(self) -> int:
        return self._peak


def _trim_heap() -> None:
    """Give freed heap back to the OS so the baseline is what is really live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- helper process
def _measure(model, job: dict[str, Any]) -> dict[str, Any]:
    """Runs in the forked child: one variant's forward at one sequence length."""
    import torch

    from .calibration_cost import VARIANTS
    from .common import DecoderSpec, token_ids
    from .package import remove_decoder_layers_

    torch.set_num_threads(int(job["threads"]))
    spec = DecoderSpec(**job["spec"])
    layers = int(job.get("layers") or spec.num_layers)
    if layers < spec.num_layers:  # the child owns its copy of the module tree
        remove_decoder_layers_(model, range(layers, spec.num_layers))
    run = VARIANTS[job["variant"]]
    ids = token_ids(spec, int(job["seq_len"]))
    with torch.inference_mode():
        run(model, token_ids(spec, 16))
        _trim_heap()
        baseline = rss_bytes()
        with PeakTracker() as tracker:
            run(model, ids)
    return {
        "baseline_mb": baseline / MB,
        "peak_mb": tracker.peak / MB,
        "delta_mb": (tracker.peak - baseline) / MB,
        "method": tracker.method,
    }


def _fork_and_measure(model, job: dict[str, Any]) -> dict[str, Any]:
    # Frozen objects are skipped by the child's gc.collect(), which would otherwise touch (and
    # so copy) every page of the parent's heap: slow, and noise in the child's RSS.
    gc.freeze()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            out = _measure(model, job)
        except BaseException:
            out = {"error": traceback.format_exc()}
        with os.fdopen(write_fd, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    with os.fdopen(read_fd) as f:
        while True:
            ready, _, _ = select.select([f], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                chunks = [json.dumps({"error": f"measurement timed out after {CHILD_TIMEOUT_S} s"})]
                break
            data = f.read()
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = "".join(chunks)
    if not text:
        return {"error": f"measurement process ended without a result (status {status})"}
    return json.loads(text)


def serve() -> None:
    """Helper-process loop: one JSON job per stdin line, one JSON result per stdout line."""
    import torch

    from . import calibration_cost  # noqa: F401  (imported once here, not in every child)
    from .common import DecoderSpec, build_decoder
    from .package import find_decoder_layers

    torch.set_num_threads(1)  # no OpenMP pool before fork: the children start their own
    models: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        key = json.dumps(job["spec"], sort_keys=True)
        if key not in models:
            models[key] = build_decoder(DecoderSpec(**job["spec"]))
            find_decoder_layers(models[key])  # initialises the plugin manager before fork
        result = _fork_and_measure(models[key], job)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class MemoryProbe:
    """Client of the helper process: ``measure(job)`` returns the child's result dict."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parent.parent
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = os.environ | {"PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.memory"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )

    def measure(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"memory helper exited with status {self.proc.wait()}")
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(
                f"memory measurement {job['variant']} seq={job['seq_len']} failed:\n{result['error']}"
            )
        return result

    def close(self) -> None:
        """Ends the helper (idempotent)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> MemoryProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    serve()

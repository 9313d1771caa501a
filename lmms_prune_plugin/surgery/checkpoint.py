"""What a local checkpoint folder holds, read cheaply and checked before anything trusts it.

transformers loads a truncated safetensors file with an error that names no file, and a config
whose ``num_hidden_layers`` disagrees with the weights with a table of MISSING keys: the missing
layers are initialised at random and evaluated. Both are caught here from the safetensors
headers (a few KiB each), never from the tensor data.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from lmms_prune_plugin.core.args import read_small_file

_MAX_HEADER = 100 << 20  # safetensors itself refuses larger headers
_INDEXED = re.compile(r"^(.*?)\.(\d+)\.(.+)$")  # prefix . first index . parameter


def local_folder(pretrained: str) -> Path | None:
    path = Path(pretrained).expanduser()
    return path if path.is_dir() else None


def read_local_config(folder: Path, name: str = "pretrained") -> dict:
    """``config.json`` of a local checkpoint; a file that is not a JSON object is named."""
    text = read_small_file(f"{name} config", folder / "config.json")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{name}={str(folder)!r} is not allowed: its config.json is not valid JSON ({err}); "
            "repair or replace that file"
        ) from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{name}={str(folder)!r} is not allowed: its config.json is not a JSON object"
        )
    return config


def safetensors_header(path: Path) -> dict:
    """The JSON header of one safetensors file, after checking that the file is whole: the
    header's last tensor must end exactly where the file does."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise _damaged(path, f"its header length ({n}) does not fit a {size}-byte file")
        try:
            header = json.loads(handle.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _damaged(path, f"its header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    spans = sorted(_span(path, name, t) for name, t in header.items() if name != "__metadata__")
    if spans and spans[0][0] != 0:
        raise _damaged(path, f"its first tensor {spans[0][2]} does not start the data")
    for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
        if start != end:  # overlapping tensors, or bytes that belong to none
            raise _damaged(path, f"tensors {name} and {other} do not follow each other")
    expected = 8 + n + (spans[-1][1] if spans else 0)
    if expected != size:
        raise _damaged(
            path, f"its header needs {expected} bytes and the file has {size} (truncated?)"
        )
    return header


_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def _span(path: Path, name: str, t: object) -> tuple[int, int, str]:
    """(start, end, name) of one tensor's bytes, its entry checked: integer offsets whose length
    is what its shape and dtype need."""
    offsets = t.get("data_offsets") if isinstance(t, dict) else None
    shape = t.get("shape") if isinstance(t, dict) else None
    ok = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
        and isinstance(shape, list)
        and all(isinstance(x, int) and x >= 0 for x in shape)
        and 0 <= offsets[0] <= offsets[1]
    )
    if not ok:
        raise _damaged(path, f"its entry for {name} is not a tensor entry ({t!r:.80})")
    size = _DTYPE_BYTES.get(t.get("dtype"))
    if size is not None and math.prod(shape) * size != offsets[1] - offsets[0]:
        raise _damaged(
            path, f"{name} has shape {shape} of {t['dtype']} but {offsets[1] - offsets[0]} bytes"
        )
    return offsets[0], offsets[1], name


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"pretrained={str(path.parent)!r} is not allowed: {path.name} is damaged: {why}; "
        "download or copy that file again"
    )


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a local checkpoint; shards named by an index must exist."""
    files = sorted(folder.glob("*.safetensors"))
    for index in sorted(folder.glob("*.safetensors.index.json")):
        text = read_small_file("pretrained index", index)
        try:
            shards = set(json.loads(text)["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise _damaged(index, f"it is not a safetensors index ({err!r})") from err
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise _damaged(index, f"it names shards that are missing: {', '.join(missing)}")
    return files


def check_index(folder: Path, headers: dict[str, dict]) -> None:
    """Every tensor an index maps to a shard is in that shard: transformers would initialise a
    missing one at random and only list it in its load report."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        weight_map = json.loads(read_small_file("pretrained index", index))["weight_map"]
        lost = sorted(t for t, shard in weight_map.items() if t not in headers.get(shard, {}))
        if lost:
            raise _damaged(
                index, f"{len(lost)} tensors it maps are not in their shard ({', '.join(lost[:3])})"
            )


def check_weight_files(pretrained: str) -> list[str]:
    """Check every safetensors file of a local checkpoint before loading; their tensor names
    (empty for a hub id or a checkpoint without safetensors)."""
    folder = local_folder(pretrained)
    if folder is None:
        return []
    headers = {f.name: safetensors_header(f) for f in weight_files(folder)}
    check_index(folder, headers)
    return [name for h in headers.values() for name in h if name != "__metadata__"]


def stored_layer_indices(names: Iterable[str], layer0: set[str]) -> tuple[str, set[int]] | None:
    """Which indexed group of tensor names holds the decoder layers (the one whose parameter
    names best match those of the loaded model's first decoder layer), and its indices."""
    groups: dict[str, dict[int, set[str]]] = {}
    for name in names:
        m = _INDEXED.match(name)
        if m:
            groups.setdefault(m[1], {}).setdefault(int(m[2]), set()).add(m[3])
    best, best_share = None, 0.5  # below half the names in common: not found, no verdict
    for prefix, layers in groups.items():
        seen = set().union(*layers.values())
        share = len(seen & layer0) / max(len(layer0), 1)
        if share > best_share:
            best, best_share = prefix, share
    return (best, set(groups[best])) if best is not None else None


def check_stored_depth(pretrained: str, names: list[str], layers: nn.ModuleList) -> None:
    """The weights hold exactly the decoder layers the config asked for: a config that says 6
    layers over weights of 4 would evaluate two random layers."""
    if not names or not len(layers):
        return
    layer0 = {n for n, _ in layers[0].named_parameters()}
    found = stored_layer_indices(names, layer0)
    if found is None:
        return
    prefix, stored = found
    want = set(range(len(layers)))
    if stored != want:
        raise ValueError(
            f"pretrained={pretrained!r} is not allowed: its config gives the text decoder "
            f"{len(layers)} layers, but the weights hold {len(stored)} ({prefix}.0-"
            f"{max(stored)}); layers not in the weights would be random. Make num_hidden_layers "
            "(and every per-layer list, such as layer_types) in config.json match the weights"
        )

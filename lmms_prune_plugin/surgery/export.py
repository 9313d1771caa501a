"""Write a pruned checkpoint that plain transformers (and lmms-eval's own wrappers) load.

Every export holds a manifest, ``MARKER``: each file the export wrote, with its size and content
hash, and the plan. A folder is replaced (``force``) only while its content is exactly that
manifest, so lmms-prune never deletes a file it did not write, nor one changed since.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from loguru import logger

from lmms_prune_plugin.core.plan import PrunePlan

MARKER = ".lmms-prune-export"  # the manifest in every folder an export writes
MANIFEST_FORMAT = 1
_MANIFEST_MAX_BYTES = 16 << 20  # a manifest lists a few dozen files; larger is not ours


def export_pruned(
    pretrained: str,
    plan: PrunePlan,
    out: str | Path,
    force: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    strict: bool = True,
) -> Path:
    """Load ``pretrained`` in its stored dtype, apply ``plan``, save weights, config, processor,
    ``plan.json`` and a model card to ``out``.

    The folder is written next to ``out`` and moved into place at the end, so a failure leaves
    whatever was there intact. ``out`` may already hold this same export; another export of
    lmms-prune is replaced only with ``force``, and only while it is exactly what lmms-prune
    wrote; any other folder never is.
    """
    from transformers import AutoModelForImageTextToText

    from lmms_prune_plugin.core.cache import weights_fingerprint
    from lmms_prune_plugin.core.plan import ModelIdentity

    out = Path(out)
    check_target(out, plan, force)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            pretrained, dtype="auto", revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as err:  # no such folder or hub id, or a folder without a checkpoint
        raise ValueError(
            f"pretrained={pretrained!r} could not be loaded ({err}); give a checkpoint folder "
            "or a hub id (model_args pretrained=, else the plan's model.name_or_path)"
        ) from err
    identity = ModelIdentity.of(
        model, pretrained, revision, weights_fingerprint(pretrained, revision)
    )
    plan.apply_(model, identity, strict)
    return save_export(model, plan, out, pretrained, force, revision, trust_remote_code)


def save_export(
    model,
    plan: PrunePlan,
    out: str | Path,
    pretrained: str,
    force: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    healing: dict | None = None,
) -> Path:
    """Write an already pruned in-memory ``model`` with ``pretrained``'s processor, ``plan.json``
    and a model card (plus ``healing.json`` when ``healing`` says how it was healed)."""
    out = Path(out)
    check_target(out, plan, force)
    _remove_leftovers(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, token = _new_temp_folder(out)
    try:
        _write_marker(tmp, token, "writing", plan, {})  # what makes an interrupted one ours
        model.save_pretrained(tmp, safe_serialization=True)
        _write_processor(tmp, pretrained, revision, trust_remote_code)
        (tmp / "plan.json").write_text(plan.to_json() + "\n")
        if healing is not None:
            (tmp / "healing.json").write_text(json.dumps(healing, indent=2, sort_keys=True))
        (tmp / "README.md").write_text(model_card(plan, pretrained, healing))
        _seal(tmp, token, plan)
        _move_into_place(tmp, out, token)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # created by this call (exclusive mkdir)
        raise
    return out


def _seal(tmp: Path, token: str, plan: PrunePlan) -> None:
    """Every file readable as the user's umask allows (safetensors writes 0600 whatever the
    umask), then the manifest of what is there."""
    files, problem = _tree(tmp)
    if problem:  # save_pretrained wrote a link or a special file: never seen
        raise ValueError(f"the export in {str(tmp)!r} {problem}")
    mode = stat.S_IMODE(tmp.stat().st_mode) & 0o666  # mkdir applied the umask to the folder
    for name in files:
        os.chmod(tmp / name, mode)
    _write_marker(tmp, token, "complete", plan, _manifest(tmp, files))


def _write_processor(folder: Path, pretrained: str, revision, trust_remote_code: bool) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        pretrained, revision=revision, trust_remote_code=trust_remote_code
    )
    processor.save_pretrained(folder)


def _new_temp_folder(out: Path) -> tuple[Path, str]:
    """``.<name>.<token>.tmp`` next to ``out``, created exclusively with the user's umask (as
    ``save_pretrained`` creates folders; ``tempfile.mkdtemp`` would make it private)."""
    while True:
        token = secrets.token_hex(8)
        tmp = out.parent / f".{out.name}.{token}.tmp"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp, token


def _write_marker(folder: Path, token: str, state: str, plan: PrunePlan, files: dict) -> None:
    from lmms_prune_plugin import __version__

    data = {
        "format": MANIFEST_FORMAT,
        "tool": "lmms-prune",
        "version": __version__,
        "state": state,
        "token": token,
        "plan": plan.to_dict(),
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _manifest(folder: Path, sizes: dict[str, int]) -> dict:
    """``{relative name: {size, xxh3_128}}`` of the files written (the marker excepted)."""
    from lmms_prune_plugin.core.cache import hash_file

    return {
        name: {"size": size, "xxh3_128": hash_file(folder / name, size)}
        for name, size in sorted(sizes.items())
    }


def _move_into_place(tmp: Path, out: Path, token: str) -> None:
    """Rename ``tmp`` to ``out``; an export of ours already there is moved aside first and
    checked once more, as the user may have changed it while this export was written."""
    if not out.exists() and not out.is_symlink():
        tmp.rename(out)
        return
    problem = _ownership_problem(out) if _has_entries(out) else None
    if problem:
        raise ValueError(
            f"out={str(out)!r} is not allowed: {problem} (it changed while the export was "
            "written); it is never replaced: move what you want to keep, or give a new folder"
        )
    if not _has_entries(out):
        tmp.rename(out)  # onto an empty folder: atomic, and fails if a file appeared
        return
    old = out.parent / f".{out.name}.{token}.old"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)  # verified above, and moved aside in one step


def _has_entries(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(True for _ in it)


# -- what may be replaced --------------------------------------------------------------------
def _tree(folder: Path) -> tuple[dict[str, int], str | None]:
    """Sizes of every regular file under ``folder`` by relative name (the marker excepted), and
    why the folder cannot be an export (a link, a special file, a folder holding no file)."""
    sizes: dict[str, int] = {}
    holding: set[str] = set()  # folders with files
    folders: set[str] = set()
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for name in dirs + names:
            rel = (rel_root / name).as_posix()
            mode = os.lstat(Path(root) / name).st_mode
            if stat.S_ISLNK(mode):
                return sizes, f"holds a symbolic link ({rel})"
            if stat.S_ISDIR(mode):
                folders.add(rel)
            elif not stat.S_ISREG(mode):
                return sizes, f"holds {rel}, which is not a regular file"
            elif rel != MARKER:
                sizes[rel] = os.lstat(Path(root) / name).st_size
                holding.update(p.as_posix() for p in Path(rel).parents if p != Path("."))
    empty = sorted(folders - holding)
    if empty:
        return sizes, f"holds folders the export did not write ({', '.join(empty[:3])})"
    return sizes, None


def _read_manifest(folder: Path) -> tuple[dict | None, str | None]:
    """The marker's content, or why there is none that lmms-prune wrote."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None, f"holds no export of lmms-prune (no {MARKER} manifest)"
    try:
        if marker.stat().st_size > _MANIFEST_MAX_BYTES:
            raise ValueError("too large")
        data = json.loads(marker.read_text())
        files = data["files"]
        entries_ok = isinstance(files, dict) and all(
            isinstance(e, dict)
            and isinstance(e.get("size"), int)
            and isinstance(e.get("xxh3_128"), str)
            for e in files.values()
        )
        if data["format"] != MANIFEST_FORMAT or not entries_ok:
            raise ValueError(f"format {data['format']!r} or its file list is not this version's")
        if data["state"] not in ("writing", "complete"):
            raise ValueError(f"state {data['state']!r}")
    except (OSError, ValueError, TypeError, KeyError) as err:
        return None, f"holds a {MARKER} that is no manifest of this lmms-prune ({err})"
    return data, None


def _ownership_problem(folder: Path) -> str | None:
    """None when ``folder`` holds exactly what an export of lmms-prune wrote; else why not."""
    from lmms_prune_plugin.core.cache import hash_file

    if folder.is_symlink():
        return "it is a symbolic link"
    data, problem = _read_manifest(folder)
    if problem:
        return problem
    if data["state"] != "complete":
        return "holds an export of lmms-prune that was never completed"
    sizes, problem = _tree(folder)
    if problem:
        return problem
    listed = data["files"]
    extra, missing = sorted(set(sizes) - set(listed)), sorted(set(listed) - set(sizes))
    if extra:
        return f"holds files the export did not write ({', '.join(extra[:3])})"
    if missing:
        return f"lacks files of the export ({', '.join(missing[:3])})"
    for name, entry in sorted(listed.items()):
        if (
            sizes[name] != entry["size"]
            or hash_file(folder / name, sizes[name]) != entry["xxh3_128"]
        ):
            return f"holds a {name} that changed since the export wrote it"
    return None


def _is_unfinished_leftover(tmp: Path, token: str) -> bool:
    """A temporary folder of ours interrupted right after it was made: only the marker, in its
    "writing" state, with the token its name holds."""
    data, problem = _read_manifest(tmp)
    sizes, tree_problem = _tree(tmp)
    if problem or tree_problem or sizes:
        return False
    return data["state"] == "writing" and data.get("token") == token


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of an interrupted export to ``out`` (``.<name>.<token>.tmp``, and
    ``.old`` for one moved aside): removed when they provably hold only what lmms-prune wrote,
    else left in place with a note."""
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    for tmp in sorted(out.parent.iterdir()):
        name = tmp.name
        token, _, kind = name[len(prefix) :].partition(".")
        if not name.startswith(prefix) or kind not in ("tmp", "old") or not token:
            continue  # ``.x.y.<token>.tmp`` belongs to an export to ``x.y``, not to ``x``
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        if _is_unfinished_leftover(tmp, token) or _ownership_problem(tmp) is None:
            shutil.rmtree(tmp)
            continue
        logger.info(
            f"lmms-prune: left {tmp} in place: it looks like the leftover of an interrupted "
            "export, but it cannot be proven to hold only what lmms-prune wrote; delete it "
            "yourself if it is one"
        )


def check_target(out: Path, plan: PrunePlan | None, force: bool) -> None:
    """Refuse before any work: a link, a file, an unwritable place, or a folder that is not
    exactly an export of lmms-prune.

    ``plan=None`` checks only what does not depend on the plan (before one is made).
    """
    out = Path(out)
    if out.is_symlink():
        raise ValueError(
            f"out={str(out)!r} is not allowed: it is a symbolic link (to "
            f"{os.readlink(out)!r}); give the folder itself, or a new one"
        )
    check_out_folder("out", out)
    if not out.exists() or not _has_entries(out):
        return
    problem = _ownership_problem(out)
    if problem:
        raise ValueError(
            f"out={str(out)!r} is not allowed: it is not empty and {problem}; it is never "
            "replaced (not even with --force): give a new or empty folder"
        )
    if plan is None or force:
        return
    try:
        same = json.loads((out / "plan.json").read_text()) == plan.to_dict()
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        raise ValueError(
            f"out={str(out)!r} already holds a different export (its plan.json differs); "
            "pass --force to replace it"
        )


def check_out_folder(name: str, out: Path) -> Path:
    """``out`` is, or can be made, a folder to write in, and its parent takes new entries
    (exports are written next to it and moved into place). Creates missing parent folders."""
    from lmms_prune_plugin.core.args import check_writable

    if out.exists() and not out.is_dir():
        raise ValueError(
            f"{name}={str(out)!r} is not allowed: it is a file, not a folder; give a folder"
        )
    check_writable(name, out)
    probe_writable(name, out, out.absolute().parent)
    if out.is_dir() and not out.is_symlink():
        probe_writable(name, out, out)
    return out


def probe_writable(name: str, given: Path, folder: Path) -> None:
    """Create ``folder`` (with its parents) and an unnamed file in it: tried for real, as
    ``os.access`` says yes to root for ``/proc`` and knows nothing of read-only mounts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"{name}={str(given)!r} is not allowed: nothing can be written in {str(folder)!r} "
            f"({err.strerror or err}); give a writable place"
        ) from err


def model_card(plan: PrunePlan, pretrained: str, healing: dict | None = None) -> str:
    """A short Markdown model card: base model, removed layers, criterion, and any healing."""
    kept = plan.model.num_layers - len(plan.removed)
    cal = plan.calibration
    sets = (
        ", ".join(f"{d}: {t} ({cal.samples.get(d, '?')} samples)" for d, t in cal.sets.items())
        or "none"
    )
    return f"""---
base_model: {pretrained}
tags: [lmms-prune, layer-pruning, vision-language-model]
---
# {Path(str(pretrained)).name} pruned to {kept} of {plan.model.num_layers} decoder layers

Made with lmms-prune {plan.package_version} from `{pretrained}` ({plan.model.architecture}).

| | |
|---|---|
| removed text-decoder layers | {list(plan.removed)} |
| criterion | {plan.criterion} {json.dumps(dict(plan.criterion_options))} |
| strategy | {plan.strategy} {json.dumps(dict(plan.strategy_options))} |
| budget | {plan.budget} |
| calibration | {sets} |
| tokens measured | {plan.token_selection} |

It is an ordinary `{plan.model.architecture}` checkpoint: `num_hidden_layers` and every per-layer
list of the text config were updated, so `AutoModelForImageTextToText.from_pretrained` (and
anything that reads the config) loads it without this package. `plan.json` holds the full plan,
including every layer's score. `{MARKER}` lists every file written here, so that
`lmms-prune export --force` replaces this folder only while it holds exactly those.
""" + (_healing_card(healing) if healing else "")


def _healing_card(h: dict) -> str:
    """The model card's healing section (``h`` is :meth:`.heal.HealResult.summary`)."""
    o, d = h["options"], h["data"]
    curve = ", ".join(f"{step}: {loss:.4f}" for step, loss in h["loss_curve"])
    targets = ", ".join(o["target_modules"])
    return f"""
## Healing

After the layers were removed, LoRA adapters on the kept layers were trained and merged into
their weights, so the checkpoint has no adapters. `healing.json` holds every detail.

| | |
|---|---|
| method | {h["method"]} (rank {o["rank"]}, alpha {o["alpha"]}, modules {targets}) |
| objective | {"KL divergence to the unpruned model (self-distillation)" if o["objective"] == "distill" else "cross-entropy on the task's targets"} |
| data | {", ".join(d["tasks"])} ({d["samples"]} samples, content hash {d["fingerprint"][:12]}) |
| steps | {o["steps"]} x batch {o["batch_size"]} x {h["world_size"]} process(es), lr {o["lr"]}, seed {o["seed"]} |
| loss | {h["loss_first"]:.4f} at step 1, {h["loss_last"]:.4f} at the end (min {h["loss_min"]:.4f}) |
| loss curve (step: loss) | {curve} |
| time | {h["seconds"]:.0f} s |
"""


def check_not_source(out: Path, pretrained: str) -> None:
    """The export never replaces the checkpoint it is made from, nor a folder holding it."""
    source = Path(pretrained).expanduser()
    if not source.exists():
        return  # a hub id
    src, dst = source.resolve(), Path(out).expanduser().resolve()
    if dst == src or dst in src.parents:
        raise ValueError(
            f"out={str(out)!r} is not allowed: it holds the checkpoint being pruned "
            f"(pretrained={pretrained!r}); give another folder"
        )

"""Hostile input to the caches, fingerprints, plan cache, sweep resume and report reading:
every case ends in one clear error naming the file (and line), or a reported recovery.

Cases that need a model use one tiny Qwen2.5-VL checkpoint (see tests/test_hostile.py).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from lmms_prune_plugin.core import cache as cache_mod
from lmms_prune_plugin.core.cache import (
    MEMO_FILE,
    Cache,
    files_fingerprint,
    folder_fingerprint,
    weights_fingerprint,
)
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
CALIB = {
    "calib_math": "prune_test_colours",
    "calib_nonmath": "prune_test_colours_b",
    "include_path": TASKS,
    "calib_limit": 4,
}
ARCH = "qwen2_5_vl"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("hc") / "qwen", num_layers=4)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """Same architecture and layer count, other weights."""
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("hc2") / "qwen", num_layers=4, seed=1)


def pruned(path, **extra):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    args = {
        "pretrained": str(path),
        **wrapper_kwargs(ARCH),
        **CALIB,
        "criterion": "math",
        "budget": 2,
    } | extra
    return PrunedVLM(**args)


def run(*argv) -> int:
    from lmms_prune_plugin.tools.cli import main

    return main([str(a) for a in argv])


def zero_norms(folder: Path, count: int = 2) -> list[str]:
    """Zero ``count`` small norm tensors of a checkpoint in place (the file keeps its size)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / WEIGHTS)
    names = [n for n in sorted(tensors) if "layernorm" in n][:count]
    for n in names:
        assert tensors[n].numel() <= 256 and tensors[n].abs().sum() > 0
        tensors[n].zero_()
    size = (folder / WEIGHTS).stat().st_size
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    assert (folder / WEIGHTS).stat().st_size == size
    return names


# --------------------------------------------------------------------------- fingerprints
def test_zeroing_two_norm_tensors_changes_the_fingerprint(ckpt, tmp_path):
    copy = Path(shutil.copytree(ckpt, tmp_path / "copy"))
    before = weights_fingerprint(str(copy))
    assert weights_fingerprint(str(copy)) == before == weights_fingerprint(str(ckpt))
    zero_norms(copy)
    assert weights_fingerprint(str(copy)) != before


@pytest.mark.parametrize("where", [0, 0.37, 0.5, -1])
def test_any_byte_changes_the_fingerprint_even_with_stat_restored(tmp_path, where):
    """Size, mtime and inode kept as they were: the memo sees the new ctime and reads again."""
    folder = tmp_path / "m"
    folder.mkdir()
    data = bytearray(os.urandom(3 << 20))
    f = folder / WEIGHTS
    f.write_bytes(data)
    first = weights_fingerprint(str(folder))
    st = f.stat()
    data[int(where * len(data)) if where != -1 else -1] ^= 0x01
    with f.open("r+b") as handle:  # in place: same inode
        handle.write(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )
    assert weights_fingerprint(str(folder)) != first


def test_the_memo_spares_reading_a_large_file_again(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(os.urandom(2 << 20))
    reads = []
    real = cache_mod.hash_file
    monkeypatch.setattr(cache_mod, "hash_file", lambda p, s=None: reads.append(p) or real(p, s))
    first = weights_fingerprint(str(folder))
    assert len(reads) == 1
    assert weights_fingerprint(str(folder)) == first and len(reads) == 1
    memo = json.loads((tmp_path / "cache" / MEMO_FILE).read_text())
    assert list(memo["files"]) == [str((folder / WEIGHTS).resolve())]
    # A copy elsewhere (another path, another inode) is read, and gives the same fingerprint.
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert weights_fingerprint(str(copy)) == first and len(reads) == 2


@pytest.mark.parametrize(
    "memo",
    [
        "\x00 not json",
        json.dumps([1, 2]),
        json.dumps({"format": 1, "files": {"x": {"size": 1}}}),
        json.dumps(
            {
                "format": 1,
                "files": {
                    "x": {"size": 1, "mtime_ns": 1, "ino": 1, "ctime_ns": 1, "xxh3_128": "zz"}
                },
            }
        ),
    ],
    ids=["garbage", "a list", "missing fields", "not a hash"],
)
def test_a_corrupt_memo_is_reported_and_never_trusted(tmp_path, logged, memo):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(os.urandom(2 << 20))
    truth = weights_fingerprint(str(folder), remember=False)
    path = tmp_path / "cache" / MEMO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(memo)
    assert weights_fingerprint(str(folder)) == truth
    assert any(str(path) in m and "corrupt" in m for m in logged)
    assert json.loads(path.read_text())["format"] == 1  # rewritten, readable again


def test_a_cache_folder_that_cannot_be_written_only_skips_remembering(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(os.urandom(2 << 20))
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    got = weights_fingerprint(str(folder), memo_dir=blocker / "cache")
    assert got == weights_fingerprint(str(folder), remember=False)
    assert blocker.read_text() == "mine"


def test_large_stray_files_count_by_whole_content(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    data = bytearray((64 << 20) + 1)  # beyond the old 64 MiB sampling threshold
    (folder / "extra.npz").write_bytes(data)
    before = files_fingerprint(str(folder))
    data[12345679] = 1  # between two of the old sampled slices
    (folder / "extra.npz").write_bytes(data)
    assert files_fingerprint(str(folder)) != before


def test_task_files_count_by_content_not_by_stat(tmp_path):
    tasks = Path(shutil.copytree(TASKS, tmp_path / "tasks"))
    before = folder_fingerprint(tasks)
    doc = tasks / "prune_test" / "docs.jsonl"
    st = doc.stat()
    text = doc.read_text()
    doc.write_text(text.replace("red", "rde", 1))  # same size
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert doc.stat().st_size == st.st_size and folder_fingerprint(tasks) != before


def test_a_hub_id_is_fingerprinted_by_its_local_snapshot(tmp_path, monkeypatch, logged):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    for commit, content in (("a" * 40, b"one"), ("b" * 40, b"two")):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        (snap / WEIGHTS).write_bytes(content)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    main = weights_fingerprint("org/tiny")
    assert main == weights_fingerprint("org/tiny", "a" * 40)
    assert main != weights_fingerprint("org/tiny", "b" * 40)
    (repo / "refs" / "main").write_text("b" * 40)  # main moved upstream: another model
    assert weights_fingerprint("org/tiny") != main
    assert weights_fingerprint("org/absent") == "org/absent@main"
    assert any("no local files of 'org/absent'" in m for m in logged)


# --------------------------------------------------------------------------- cache entries
def test_an_entry_answers_only_the_key_it_was_computed_for(tmp_path, logged, monkeypatch):
    c = Cache(tmp_path / "c")
    data = {"stats": [1, 2], "task": "t"}
    c.put("calibration", "k1", data)
    assert c.get("calibration", "k1") == data
    shutil.copy(c.path("calibration", "k1"), c.path("calibration", "k2"))  # "same file name"
    assert c.get("calibration", "k2") is None
    assert any(str(c.path("calibration", "k2")) in m and "'k1', not 'k2'" in m for m in logged)
    shutil.copy(c.path("calibration", "k1"), c.path("export", "k1"))
    assert c.get("export", "k1") is None
    assert any("is a 'calibration' entry, not a 'export' one" in m for m in logged)
    c.path("calibration", "k3").write_text(json.dumps(data))  # no key at all
    assert c.get("calibration", "k3") is None
    assert any("records no key" in m for m in logged)
    monkeypatch.setattr(cache_mod, "__version__", "999.0")
    assert c.get("calibration", "k1") is None
    assert any("written by lmms-prune" in m and "this is 999.0" in m for m in logged)


def test_a_new_kind_of_entry_round_trips_without_its_bookkeeping(tmp_path):
    c = Cache(tmp_path / "c")
    c.put("export", "k", {"path": "/x"})
    assert c.get("export", "k") == {"path": "/x"}
    assert json.loads(c.path("export", "k").read_text())["_key"] == "k"


# --------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def calibrated(ckpt, tmp_path_factory):
    """One calibrated load; its plan, and the cache it filled."""
    cache = tmp_path_factory.mktemp("cache")
    lm = pruned(ckpt, plan_cache=str(cache))
    assert lm.calibration_forwards > 0
    return lm.plan, cache


def _copy(cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache, tmp_path / "cache_copy"))


def test_changed_weights_miss_the_plan_cache(calibrated, ckpt, tmp_path):
    plan, cache = calibrated
    copy = Path(shutil.copytree(ckpt, tmp_path / "ckpt"))
    cache = _copy(cache, tmp_path)
    assert pruned(copy, plan_cache=str(cache)).calibration_forwards == 0  # a copy: same weights
    zero_norms(copy)
    lm = pruned(copy, plan_cache=str(cache))
    assert lm.calibration_forwards > 0 and lm.identity.fingerprint != plan.model.fingerprint


def test_a_calibration_entry_of_another_model_under_this_name_is_refused(
    calibrated, ckpt, other_ckpt, tmp_path, logged
):
    plan, cache = calibrated
    theirs = tmp_path / "theirs"
    pruned(other_ckpt, plan_cache=str(theirs))
    mine = _copy(cache, tmp_path)
    for f in mine.glob("plan-*.json"):
        f.unlink()
    ours, foreign = sorted(mine.glob("calibration-*.json")), sorted(theirs.glob("calibration-*"))
    assert len(ours) == len(foreign) >= 1
    by_task = {json.loads(f.read_text())["task"]: f for f in foreign}
    for f in ours:  # each entry replaced by the other model's entry for the same task
        shutil.copy(by_task[json.loads(f.read_text())["task"]], f)
    lm = pruned(ckpt, plan_cache=str(mine))
    assert lm.calibration_forwards > 0 and lm.plan == plan
    assert all(any(str(f) in m and "was computed for key" in m for m in logged) for f in ours)


@pytest.mark.parametrize(
    "edit, named",
    [
        ("removed", "where its scores and options give"),
        ("scores", "where its scores and options give"),
        ("alpha", "criterion_options={'alpha': 0.25"),
        ("tokens", "token_selection='last', this run's is 'all'"),
    ],
)
def test_a_cached_plan_that_does_not_follow_from_its_scores_is_not_used(
    calibrated, ckpt, tmp_path, logged, edit, named
):
    plan, cache = calibrated
    cache = _copy(cache, tmp_path)
    (entry,) = cache.glob("plan-*.json")
    data = json.loads(entry.read_text())
    if edit == "removed":  # another valid pair of layers: the plan file itself stays valid
        data["removed"] = sorted(set(range(4)) - set(plan.removed))
    elif edit == "scores":  # the removed layers no longer score highest
        data["scores"] = [-s for s in data["scores"]]
    elif edit == "alpha":
        data["criterion_options"]["alpha"] = 0.25
    else:
        data["token_selection"] = "last"
    entry.write_text(json.dumps(data))
    lm = pruned(ckpt, plan_cache=str(cache))
    assert lm.plan == plan and lm.calibration_forwards == 0  # made again from the calibration
    assert any(str(entry) in m and "recomputing" in m and named in m for m in logged)


def test_every_criterion_s_plan_follows_from_its_own_scores():
    """Re-deriving a plan from its JSON gives it back, for plain, block and greedy scores."""
    from lmms_prune_plugin.core.criteria import Scores, order_scores
    from lmms_prune_plugin.core.plan import ModelIdentity, PrunePlan
    from lmms_prune_plugin.core.planner import PruneOptions, derivation_problem, select

    model = ModelIdentity("m", "A", "t", 8, "model.layers")
    per_layer = (0.9, 0.1, 0.8, 0.85, 0.2, 0.3, 0.7, 0.6)
    blocks = {3: (float("-inf"), 0.1, 0.2, 0.9, 0.3, 0.2, 0.1, 0.0)}
    cases = [
        (Scores(per_layer), PruneOptions(criterion="math", budget=3, strategy="spaced")),
        (Scores(per_layer, blocks), PruneOptions(criterion="angular", budget=3)),
        (order_scores((5, 2, 6), 3, 8), PruneOptions(criterion="iter_math", budget=3)),
    ]
    for scores, options in cases:
        plan = PrunePlan.from_json(select(model, scores, options).to_json())
        assert derivation_problem(plan, options) is None, options
        edited = PrunePlan.from_dict(plan.to_dict() | {"removed": [0, 1, 7]})
        assert "removed=[0, 1, 7] where its scores and options give" in derivation_problem(
            edited, options
        )
    assert plan.criterion_options["order"] == [5, 2, 6]


# --------------------------------------------------------------------------- sweep resume
SWEEP = ["--criteria", "last", "--budgets", "1", "--tasks", "prune_test_colours", "--limit", "1"]


def sweep_args(path, out, **model_args):
    margs = {"pretrained": path} | wrapper_kwargs(ARCH) | model_args
    calib = [f"--{k}={v}" for k, v in CALIB.items()]
    return [
        "sweep",
        "--model_args",
        ",".join(f"{k}={v}" for k, v in margs.items()),
        *calib,
        *SWEEP,
        "--out",
        out,
    ]


def test_resume_refuses_rows_of_other_preprocessing_or_weights(ckpt, tmp_path, capsys):
    path = Path(shutil.copytree(ckpt, tmp_path / "ckpt"))
    out = tmp_path / "s.jsonl"
    assert run(*sweep_args(path, out)) == 0
    before = out.read_text()
    assert run(*sweep_args(path, out)) == 0  # the same run: nothing to do
    assert "1 cells, 0 evaluated, 1 already in" in capsys.readouterr().out
    pixels = 2 * wrapper_kwargs(ARCH)["min_pixels"]
    assert run(*sweep_args(path, out, min_pixels=pixels)) == 2
    err = capsys.readouterr().err
    assert f"out='{out}': line 1 holds a row of '{path}' made with other run" in err
    zero_norms(path)  # other weights at the same path
    assert run(*sweep_args(path, out)) == 2
    assert "line 1 holds a row" in capsys.readouterr().err and out.read_text() == before
    row = json.loads(before)
    assert row["settings"]["run"] and set(row["settings"]["calibration_keys"]) == {
        "math",
        "nonmath",
    }


def _row(**change) -> dict:
    row = {
        "model": "m",
        "criterion": "math",
        "strategy": "topk",
        "budget": 2,
        "num_layers": 6,
        "removed": [1, 3],
        "tasks": ["t"],
        "limit": None,
        "metrics": {"t": {"exact_match,none": 0.5}},
        "scores": [0.1, 0.9, 0.2, 0.8, 0.3, 0.0],
        "settings": {"run": "r", "options": {"min_gap": 2, "protect_first": 0, "protect_last": 0}},
    }
    return row | change


ROWS = [
    _row(criterion="none", strategy="none", budget=0, removed=[], scores=[]),
    _row(),
    _row(strategy="spaced", removed=[1, 3]),
    _row(
        criterion="angular",
        strategy="contiguous",
        removed=[2, 3],
        criterion_options={"block_scores": [None, 0.1, 0.9, 0.2, 0.3]},
    ),
]


def _write(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


@pytest.mark.parametrize(
    "index, change, want",
    [
        (1, {"removed": [1, 4]}, "[1, 3]"),
        (2, {"settings": {"options": {"min_gap": 3}}}, "[1, 4]"),
        (3, {"removed": [1, 2]}, "[2, 3]"),
        (0, {"removed": [2], "budget": 0}, None),
    ],
)
def test_a_hand_edited_row_is_refused_by_report_and_resume(tmp_path, capsys, index, change, want):
    from lmms_prune_plugin.tools.sweep import read_rows

    assert len(read_rows(_write(tmp_path / "good.jsonl", ROWS))) == len(ROWS)
    rows = [dict(r) for r in ROWS]
    rows[index] = rows[index] | change
    f = _write(tmp_path / "s.jsonl", rows)
    before = f.read_text()
    assert run("report", f, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert f"{f}:{index + 1}: the row does not hold its cell's plan: removed=" in err
    assert want is None or f"on the row's scores: {want}" in err
    assert run("sweep", "--out", f) == 2  # resume: before any model is loaded
    assert f"{f}:{index + 1}: the row does not hold" in capsys.readouterr().err
    assert f.read_text() == before and not (tmp_path / "r").exists()


def test_a_torn_last_line_is_dropped_and_reported(tmp_path, logged):
    from lmms_prune_plugin.tools.sweep import _mend_tail, read_rows

    f = _write(tmp_path / "s.jsonl", ROWS[:2], tail=json.dumps(ROWS[2])[:40])
    assert read_rows(f) == ROWS[:2]
    assert any(f"{f}:3: dropped a torn last line" in m for m in logged)
    _mend_tail(f)
    assert f.read_text() == "".join(json.dumps(r) + "\n" for r in ROWS[:2])
    whole = _write(tmp_path / "w.jsonl", ROWS[:1], tail=json.dumps(ROWS[1]))  # newline lost only
    _mend_tail(whole)
    assert read_rows(whole) == ROWS[:2] and whole.read_text().endswith("}\n")


@pytest.mark.parametrize(
    "text, line",
    [
        (json.dumps(ROWS[0]) + "\n{torn in the middle\n" + json.dumps(ROWS[1]) + "\n", 2),
        (json.dumps(ROWS[0]) + "\n{complete but corrupt\n", 2),  # it has its newline
        (json.dumps(ROWS[0]) + "\nnot a row at all", 2),
    ],
    ids=["middle", "last with newline", "last, not a row"],
)
def test_a_corrupt_line_that_is_not_a_torn_tail_is_an_error(tmp_path, text, line):
    from lmms_prune_plugin.tools.sweep import read_rows

    f = tmp_path / "s.jsonl"
    f.write_text(text)
    with pytest.raises(ValueError, match=f"{f}:{line}: not a JSON line"):
        read_rows(f)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xfe{\n"])
def test_a_binary_file_is_named_not_a_traceback(tmp_path, capsys, data):
    f = tmp_path / "plot.png"
    f.write_bytes(data)
    assert run("report", f, "--out", tmp_path / "r") == 2
    assert f"sweep='{f}' is not a sweep JSONL file: it is binary" in capsys.readouterr().err
    assert run("sweep", "--out", f) == 2
    assert f"out='{f}' is not a sweep JSONL file" in capsys.readouterr().err
    assert f.read_bytes() == data


# --------------------------------------------------------------------------- report
def test_report_refuses_a_cell_twice_and_rows_of_other_settings(tmp_path, capsys):
    twice = _write(tmp_path / "twice.jsonl", [ROWS[1], ROWS[1] | {"tasks": ["u"]}])
    assert run("report", twice, "--out", tmp_path / "a") == 2
    assert "method='math+topk', budget=2, engine='hf' twice" in capsys.readouterr().err
    other = ROWS[2] | {"settings": {"run": "r", "options": {"min_gap": 3}}, "removed": [1, 4]}
    mixed = _write(tmp_path / "mixed.jsonl", [ROWS[1], other])
    assert run("report", mixed, "--out", tmp_path / "b") == 2
    assert "made with other shared prune options" in capsys.readouterr().err
    assert run("report", mixed, "--out", tmp_path / "b", "--allow-mixed") == 0


def test_by_budget_keeps_each_engine_s_curve():
    from lmms_prune_plugin.tools.report import by_budget, leaderboard

    rows = [ROWS[0], ROWS[1], ROWS[0] | {"engine": "vllm"}, ROWS[1] | {"engine": "vllm"}]
    rows[3] = rows[3] | {"metrics": {"t": {"exact_match,none": 0.25}}}
    table = by_budget(leaderboard(rows), columns=("overall",))
    assert "| math+topk [hf] | 50.0 | 50.0 |" in table
    assert "| math+topk [vllm] | 50.0 | 25.0 |" in table


# --------------------------------------------------------------------------- unknown tasks
def test_unknown_tasks_get_close_names():
    from lmms_eval.tasks import TaskManager

    from lmms_prune_plugin import TASKS_DIR
    from lmms_prune_plugin.tools.sweep import check_tasks

    tm = TaskManager(include_path=[TASKS_DIR], include_defaults=False)
    with pytest.raises(ValueError) as err:
        check_tasks(["prune_demo_mth", "PRUNE_DEMO_MATH", "prune_dem", "zzqx_task"], tm)
    msg = str(err.value)
    assert "not known to lmms-eval" in msg
    assert "'prune_demo_mth' (did you mean 'prune_demo_math'," in msg
    assert "'PRUNE_DEMO_MATH' (did you mean 'prune_demo_math'," in msg
    demo = sorted(t for t in tm.all_tasks if t.startswith("prune_demo"))
    hint = msg.split("'prune_dem' (did you mean ")[1].split("?")[0]
    assert len(demo) >= 3 and all(repr(t) in hint for t in demo[:3])
    assert "'zzqx_task' (no similar name)" in msg

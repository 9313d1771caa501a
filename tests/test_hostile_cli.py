"""Hostile input to ``lmms-prune`` and its exports: a clear error before any work, or correct
behaviour; never a user's file deleted or overwritten.

Cases that must fail before loading use ``no_load``: the model loads are replaced by a sentinel,
so reaching one fails the test with ``Loaded``. A few cases export the tiny checkpoint for real.
"""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from helpers import Loaded

from lmms_prune_plugin.core.plan import PrunePlan
from lmms_prune_plugin.surgery.export import MARKER, check_target
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs
from lmms_prune_plugin.tools.cli import main

TASKS = str(Path(__file__).parent / "tasks")
ARCH = "qwen2_5_vl"


def run(*argv) -> int:
    return main([str(a) for a in argv])


def margs(ckpt, **extra) -> str:
    items = {"pretrained": ckpt} | wrapper_kwargs(ARCH) | extra
    return ",".join(f"{k}={v}" for k, v in items.items())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("ckpt") / "qwen", num_layers=4)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """One export made by the CLI (criterion last: no calibration needed)."""
    out = tmp_path_factory.mktemp("exp") / "export"
    argv = ["export", "--model_args", margs(ckpt), "--plan_cache", "false"]
    assert run(*argv, "--criterion", "last", "--budget", "1", "--out", out) == 0
    return out


@pytest.fixture
def no_load(monkeypatch):
    """Every model load raises ``Loaded``; returns what ``pruned_vlm`` would have been given."""
    seen = {}

    def load(a, **prune):
        from lmms_prune_plugin.tools import cli

        seen.update(cli._pruned_vlm_args(a, **prune))
        raise Loaded

    def from_pretrained(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr("lmms_prune_plugin.tools.cli._load", load)
    monkeypatch.setattr("transformers.AutoModelForImageTextToText.from_pretrained", from_pretrained)
    return seen


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: a file's bytes, a link's target, a folder's name."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = (
            ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        )
    return out


def copy_of(exported: Path, where: Path) -> Path:
    out = where / "export"
    shutil.copytree(exported, out, symlinks=True)
    return out


# --------------------------------------------------------------------------- --force
def test_force_never_replaces_a_users_folder_with_notes_and_a_plan(
    exported, tmp_path, no_load, capsys
):
    user = tmp_path / "work"
    user.mkdir()
    (user / "README.md").write_text(
        "My notes on lmms-prune: " + (exported / "README.md").read_text()
    )
    PrunePlan.load(exported / "plan.json").save(user / "plan.json")
    (user / "notes.txt").write_text("two weeks of results")
    before = snapshot(user)
    for extra in ([], ["--plan", exported / "plan.json"]):
        assert run("export", "--out", user, "--force", *extra) == 2
        err = capsys.readouterr().err
        assert f"out={str(user)!r}" in err and "holds no export of lmms-prune" in err
        assert "not even with --force" in err
    assert snapshot(user) == before


def _add_file(out: Path) -> str:
    (out / "notes.txt").write_text("mine")
    return "holds files the export did not write (notes.txt)"


def _edit_same_size(out: Path) -> str:
    data = bytearray((out / "README.md").read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")
    (out / "README.md").write_bytes(bytes(data))
    return "README.md that changed"


def _remove_file(out: Path) -> str:
    (out / "README.md").unlink()
    return "lacks files of the export (README.md)"


def _link_a_file(out: Path) -> str:
    target = out.parent / "elsewhere.md"
    (out / "README.md").rename(target)
    (out / "README.md").symlink_to(target)  # same content, through a link
    return "symbolic link (README.md)"


def _link_a_folder(out: Path) -> str:
    (out.parent / "data").mkdir()
    (out / "data").symlink_to(out.parent / "data", target_is_directory=True)
    return "symbolic link (data)"


def _empty_folder(out: Path) -> str:
    (out / "drafts").mkdir()
    return "folders the export did not write (drafts)"


def _unfinished(out: Path) -> str:
    data = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps(data | {"state": "writing"}))
    return "never completed"


def _old_marker(out: Path) -> str:  # what exports wrote before there was a manifest
    (out / MARKER).write_text((out / "plan.json").read_text())
    return f"{MARKER} that is no manifest"


def _marker_link(out: Path) -> str:
    (out / MARKER).rename(out.parent / "m")
    (out / MARKER).symlink_to(out.parent / "m")
    return f"no {MARKER} manifest"


@pytest.mark.parametrize(
    "change",
    [
        _add_file,
        _edit_same_size,
        _remove_file,
        _link_a_file,
        _link_a_folder,
        _empty_folder,
        _unfinished,
        _old_marker,
        _marker_link,
    ],
)
def test_force_refuses_an_export_that_is_not_exactly_what_was_written(exported, tmp_path, change):
    out = copy_of(exported, tmp_path)
    check_target(out, None, force=True)  # the unchanged copy is ours
    problem = change(out)
    before = snapshot(out)
    with pytest.raises(ValueError, match="never replaced \\(not even with --force\\)") as err:
        check_target(out, None, force=True)
    assert problem in str(err.value)
    assert snapshot(out) == before


def test_force_replaces_an_unchanged_export_and_its_manifest_lists_every_file(
    ckpt, exported, tmp_path
):
    from lmms_prune_plugin.core.cache import hash_file

    out = copy_of(exported, tmp_path)
    argv = ["export", "--model_args", margs(ckpt), "--plan_cache", "false", "--criterion", "last"]
    assert run(*argv, "--budget", "2", "--out", out) == 2  # another plan: only with --force
    assert run(*argv, "--budget", "2", "--out", out, "--force") == 0
    assert PrunePlan.load(out / "plan.json").removed == (2, 3)
    manifest = json.loads((out / MARKER).read_text())
    files = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.name != MARKER}
    assert manifest["state"] == "complete" and set(manifest["files"]) == set(files)
    for name, entry in manifest["files"].items():
        assert entry == {"size": files[name].stat().st_size, "xxh3_128": hash_file(files[name])}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder


def test_an_export_changed_while_a_new_one_is_written_is_kept(
    ckpt, exported, tmp_path, monkeypatch
):
    from lmms_prune_plugin.surgery import export

    out = copy_of(exported, tmp_path)
    write_processor = export._write_processor

    def user_writes_meanwhile(*args):
        write_processor(*args)
        (out / "results.txt").write_text("written during the export")

    monkeypatch.setattr(export, "_write_processor", user_writes_meanwhile)
    plan = PrunePlan.load(exported / "plan.json")
    with pytest.raises(ValueError, match="changed while the export was written"):
        export.export_pruned(str(ckpt), plan, out, force=True)
    assert (out / "results.txt").read_text() == "written during the export"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_an_export_has_the_modes_the_umask_gives(ckpt, exported, tmp_path, umask):
    from lmms_prune_plugin.surgery.export import export_pruned

    plan = PrunePlan.load(exported / "plan.json")
    old = os.umask(umask)
    try:
        out = export_pruned(str(ckpt), plan, tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}


# --------------------------------------------------------------------------- outputs, up front
def test_export_to_a_symbolic_link_is_refused_before_loading(tmp_path, no_load, capsys):
    (tmp_path / "real").mkdir()
    for name, target in (("link", tmp_path / "real"), ("dangling", tmp_path / "gone")):
        (tmp_path / name).symlink_to(target)
        assert run("export", "--out", tmp_path / name) == 2
        err = capsys.readouterr().err
        assert f"out={str(tmp_path / name)!r}" in err and "symbolic link" in err
    assert not any((tmp_path / "real").iterdir())


@pytest.mark.parametrize(
    "command, out",
    [
        ("rank", "/proc/lmms_prune_out"),
        ("export", "/proc/lmms_prune_out"),
        ("heal", "/proc/lmms_prune_out"),
        ("sweep", "/proc/lmms_prune_out/s.jsonl"),
    ],
)
def test_an_output_nothing_can_be_written_to_is_refused_before_loading(
    no_load, capsys, command, out
):
    assert run(command, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"out={out!r} is not allowed" in err and "writ" in err.split("is not allowed")[1]


def test_export_onto_a_device_names_it(no_load, capsys):
    assert run("export", "--out", "/dev/null") == 2
    assert "out='/dev/null' is not allowed: it is a file, not a folder" in capsys.readouterr().err


def test_report_to_an_unwritable_place_writes_nothing(tmp_path, capsys):
    rows = tmp_path / "s.jsonl"
    row = {
        "model": "m",
        "criterion": "none",
        "strategy": "none",
        "budget": 0,
        "kept_layers": 4,
        "removed": [],
        "tasks": ["t"],
        "metrics": {"t": {"acc,none": 0.5}},
    }
    rows.write_text(json.dumps(row) + "\n")
    assert run("report", rows, "--out", "/proc/lmms_prune_report") == 2
    assert "out='/proc/lmms_prune_report' is not allowed" in capsys.readouterr().err


def test_export_of_a_checkpoint_that_is_not_there_names_it(exported, tmp_path, capsys):
    argv = ["export", "--plan", exported / "plan.json", "--out", tmp_path / "out"]
    assert run(*argv, "--model_args", "pretrained=/no/such/checkpoint") == 2
    err = capsys.readouterr().err
    assert "pretrained='/no/such/checkpoint' could not be loaded" in err
    assert not (tmp_path / "out").exists()


def test_an_os_error_is_reported_not_raised(monkeypatch, capsys):
    def full_disk(a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lmms_prune_plugin.tools.cli.cmd_list", full_disk)
    assert run("list") == 1
    assert "lmms-prune list: error: OSError: [Errno 28] No space left on device" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- flag values
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["export", "--plan", "", "--out", "x"], "plan"),
        (["export", "--out", ""], "out"),
        (["export", "--criterion", " ", "--out", "x"], "criterion"),
        (["rank", "--out", ""], "out"),
        (["rank", "--model_args", ""], "model_args"),
        (["rank", "--calib_math", ""], "calib_math"),
        (["sweep", "--tasks", ""], "tasks"),
        (["sweep", "--out", ""], "out"),
        (["heal", "--data", "", "--out", "x"], "data"),
        (["heal", "--plan", "", "--out", "x"], "plan"),
        (["report", ""], "sweep"),
    ],
)
def test_an_empty_value_is_an_error_not_no_value(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--{flag}" in err or f"argument {flag}" in err
    assert f"{flag}=" in err and "it is empty; give" in err


@pytest.mark.parametrize(
    "argv, flag, value",
    [
        (["sweep", "--criteria", "math,,last"], "criteria", "math,,last"),
        (["sweep", "--budgets", "2,"], "budgets", "2,"),
        (["heal", "--target_modules", "q_proj,", "--out", "x"], "target_modules", "q_proj,"),
    ],
)
def test_an_empty_list_item_is_an_error(argv, flag, value, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"--{flag}" in err and f"{flag}={value!r} is not allowed" in err


@pytest.mark.parametrize("budgets", ["abc", "2,four", "nan", "1,inf"])
def test_sweep_budgets_that_are_not_numbers_name_the_flag(budgets, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--budgets", budgets])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --budgets" in err and f"budgets={budgets!r} is not allowed" in err
    assert "give a comma list of layer counts" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("confidence", "2", "give a level between 0 and 1"),
        ("confidence", "nan", "give a level between 0 and 1"),
        ("bootstrap", "1", "give an integer >= 2"),
        ("converge", "-1", "give a spread in points >= 0"),
    ],
)
def test_report_interval_values_are_checked_even_without_documents(flag, value, allowed, capsys):
    with pytest.raises(SystemExit):
        main(["report", "s.jsonl", f"--{flag}", value])
    assert f"{flag}={value!r} is not allowed: {allowed}" in capsys.readouterr().err


def test_sweep_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--limit", "0"])
    assert "limit='0' is not allowed: give an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "missing", "empty file"])
def test_a_plan_that_is_not_a_plan_file_is_named(tmp_path, no_load, capsys, kind):
    plan = tmp_path / "plan.json"
    if kind == "folder":
        plan.mkdir()
    elif kind == "empty file":
        plan.write_text("")
    for command in ("export", "heal"):
        assert run(command, "--plan", plan, "--out", tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert f"plan={str(plan)!r}" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- contradictions
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--criterion", "math"], "--criterion='math' is not allowed with a plan file"),
        (["--budget", "2"], "--budget='2' is not allowed with a plan file"),
        (["--calib_limit", "4"], "--calib_limit='4' is not allowed with a plan file"),
        (["--force_simple"], "--force_simple=True is not allowed with a plan file"),
        (["--model_args", "plan=other.json"], "plan is given both as --plan"),
        (
            ["--model_args", "criterion=math"],
            "model_args criterion='math' is not allowed with a plan file",
        ),
    ],
)
def test_export_with_a_plan_and_prune_options_is_refused(
    exported, tmp_path, no_load, capsys, extra, message
):
    out = tmp_path / "out"
    assert run("export", "--plan", exported / "plan.json", *extra, "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_heal_with_a_plan_and_prune_options_is_refused(exported, tmp_path, no_load, capsys):
    argv = ["heal", "--plan", exported / "plan.json", "--out", tmp_path / "out"]
    assert run(*argv, "--criterion", "math") == 2
    assert "--criterion='math' is not allowed with a plan file" in capsys.readouterr().err
    assert run(*argv, "--model_args", "plan=p.json") == 2
    assert "model_args plan='p.json' is not allowed with lmms-prune heal: give --plan" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "command, key, value, advice",
    [
        ("rank", "budget", 2, "give --budget 2 instead"),
        ("rank", "criterion", "'math'", "give --criteria math instead"),
        ("rank", "min_gap", 2, "give --min_gap 2 instead"),
        ("sweep", "budget", 2, "give --budgets 2 instead"),
        ("sweep", "engine", "'vllm'", "give --engine vllm instead"),
        ("heal", "budget", 2, "give --budget 2 instead"),
    ],
)
def test_a_key_the_command_sets_itself_is_named_as_given(
    tmp_path, no_load, capsys, command, key, value, advice
):
    raw = str(value).strip("'")
    argv = [command, "--model_args", f"{key}={raw}"]
    argv += ["--out", tmp_path / ("s.jsonl" if command == "sweep" else "out")]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert f"model_args {key}={value} is not allowed with lmms-prune {command}" in err
    assert advice in err and "(0)" not in err  # no value the user never gave


def test_export_budget_in_model_args_alone_is_used(tmp_path, no_load):
    with pytest.raises(Loaded):
        run("export", "--model_args", "budget=2", "--out", tmp_path / "out")
    assert no_load["budget"] == 2  # not a conflict with a default --budget the user never gave


def test_export_with_a_plan_names_model_args_it_does_not_use(
    ckpt, exported, tmp_path, no_load, capsys
):
    args = margs(ckpt, device_map="cpu")
    with pytest.raises(Loaded):
        run(
            "export",
            "--plan",
            exported / "plan.json",
            "--model_args",
            args,
            "--out",
            tmp_path / "o",
        )
    err = capsys.readouterr().err
    assert "does not use model_args device, device_map, max_pixels, min_pixels" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "10"], "--steps=10 is not allowed without --heal"),
        (["--heal", "--engine", "vllm"], "--engine='vllm' is not allowed with --heal"),
    ],
)
def test_sweep_heal_flags_without_heal_are_refused(tmp_path, no_load, capsys, argv, message):
    assert run("sweep", *argv, "--out", tmp_path / "s.jsonl") == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- heal data
def _task_without_target(root: Path) -> str:
    folder = root / "tasks"
    folder.mkdir()
    src = Path(TASKS) / "prune_test"
    for name in ("docs.jsonl", "utils.py"):
        shutil.copy(src / name, folder / name)
    yaml = (src / "prune_test_colours.yaml").read_text()
    yaml = yaml.replace("task: prune_test_colours", "task: prune_heal_nokey")
    lines = [line for line in yaml.splitlines() if not line.startswith("doc_to_target")]
    (folder / "nokey.yaml").write_text("\n".join(lines) + "\n")
    return str(folder)


@pytest.mark.parametrize("objective", ["sft", "distill"])
def test_heal_data_without_doc_to_target_is_named_before_loading(
    tmp_path, no_load, capsys, objective
):
    tasks = _task_without_target(tmp_path)
    argv = ["heal", "--include_path", tasks, "--data", "prune_heal_nokey", "--objective", objective]
    assert run(*argv, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "data='prune_heal_nokey': task 'prune_heal_nokey' has no doc_to_target" in err
    assert "download" not in err
    assert run(*argv[:-2], "--data", "prune_heal_nokee", "--out", tmp_path / "out") == 2
    assert "lmms-eval knows no task 'prune_heal_nokee' (did you mean" in capsys.readouterr().err


# --------------------------------------------------------------------------- logging
def test_lmms_eval_and_our_messages_are_logged_at_info(capsys, monkeypatch):
    from loguru import logger

    monkeypatch.delenv("LOGURU_LEVEL", raising=False)
    assert run("list") == 0
    capsys.readouterr()
    logger.debug("a debug line")
    logger.info("an info line")
    err = capsys.readouterr().err
    assert "an info line" in err and "a debug line" not in err
    assert run("list", "--verbosity", "debug") == 0
    logger.debug("a debug line")
    assert "a debug line" in capsys.readouterr().err
    monkeypatch.setenv("LOGURU_LEVEL", "WARNING")
    assert run("list") == 0
    logger.info("an info line")
    assert "an info line" not in capsys.readouterr().err
    monkeypatch.setenv("LOGURU_LEVEL", "LOUD")
    assert run("list") == 2
    assert "LOGURU_LEVEL='LOUD' is not allowed" in capsys.readouterr().err
    monkeypatch.delenv("LOGURU_LEVEL")
    assert run("list") == 0


def test_sweep_prints_no_lmms_eval_debug_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOGURU_LEVEL", raising=False)
    argv = ["sweep", "--tasks", "no_such_task", "--out", tmp_path / "s.jsonl"]
    assert run(*argv) == 2  # the task index (where lmms-eval logs at DEBUG) was built
    err = capsys.readouterr().err
    assert "no_such_task" in err and "| DEBUG" not in err

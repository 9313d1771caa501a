"""Which lmms-eval tasks the project tells users to run, and whether their Python hooks import.

``project_task_names()`` reads the code blocks of README.md and docs/*.md, every file under ``examples/recipes/``,
the CI examples and the registered calibration sets, and returns each task name with the files
that name it. ``check_task_code()`` resolves a name with lmms-eval's TaskManager and imports
what the task runs at evaluation time -- the ``!function`` hooks of its YAML (and its members'
YAMLs for a group or tag), and every module those hook files import, including imports inside
``try`` blocks and functions -- without building the task, so no data set is downloaded.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import shlex
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "pip install 'lmms-prune[tasks]' or make install-tasks"
# Packages the tasks extra cannot declare: latex2sympy2 (mathvision) pins
# antlr4-python3-runtime==4.7.2 and latex2sympy2_extended (math_verify, the *_reasoning tasks)
# refuses it; both work on 4.9.3, installed with --no-deps (requirements-tasks-nodeps.txt).
NODEPS_FILE = ROOT / "requirements-tasks-nodeps.txt"
NODEPS_HINT = f"pip install --no-deps -r {NODEPS_FILE.name} or make install-tasks"
NODEPS_MODULES = {"latex2sympy2_extended", "antlr4"}

NAME = re.compile(r"^\w[\w.-]*$")  # what a task name looks like
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(\S.*)?$")
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")
_TASKS_VAR = re.compile(r"(?:^|\s)(?:export\s+)?\w*TASKS=(\S+)")  # MATH_TASKS=a,b [cmd]
_SOURCE = re.compile(r"^\s*(?:source|\.)\s+(\S+)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
UNRESOLVED = "<unresolved>"


# --------------------------------------------------------------------------- collecting names


def _shell_vars(path: Path, seen: set | None = None) -> dict[str, str]:
    """Plain ``NAME=value`` assignments of a shell file and of the files it sources."""
    seen = set() if seen is None else seen
    if path in seen or not path.is_file():
        return {}
    seen.add(path)
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := _SOURCE.match(line):
            found.update(_shell_vars(path.parent / Path(m.group(1).strip("\"'")).name, seen))
        elif (m := _ASSIGN.match(line)) and m.group(2):
            try:
                words = shlex.split(m.group(2), comments=True)
            except ValueError:
                continue
            if len(words) == 1:
                found[m.group(1)] = _expand(words[0], found)
    return found


def _expand(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        return m.group(2) if m.group(2) is not None else UNRESOLVED

    return _VAR.sub(sub, text)


def _split_names(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _calib_task(name: str) -> str | None:
    from lmms_prune_plugin.harnesses.lmms_eval.requests import resolve_task_name

    return None if name.lower() == "none" else resolve_task_name(name)


def _command_tasks(argv: list[str], program: str) -> list[str]:
    """Tasks one ``lmms-prune`` / ``lmms-eval`` command line evaluates or calibrates on."""
    if program == "lmms-prune":
        from lmms_prune_plugin.tools.cli import build_parser

        if not argv or argv[0] not in {"rank", "export", "sweep"}:
            return []  # report reads a sweep file; nothing is loaded
        args, _ = build_parser().parse_known_args(argv)
        from lmms_prune_plugin.core.calibration import DEFAULT_SETS

        # A flag not given means pruned_vlm's default set for that domain.
        names = [_calib_task(args.calib_math or DEFAULT_SETS["math"]),
                 _calib_task(args.calib_nonmath or DEFAULT_SETS["nonmath"])]  # fmt: skip
        names += _split_names(getattr(args, "tasks", "") or "")
        return [n for n in names if n]
    opts: dict[str, str] = {}
    it = iter(argv)
    for word in it:
        if word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            opts[key] = value
        elif word.startswith("--"):
            opts[word[2:]] = next(it, "")
    names = _split_names(opts.get("tasks", ""))
    if opts.get("model") == "pruned_vlm":
        from lmms_prune_plugin.core.calibration import DEFAULT_SETS

        margs = dict(
            kv.split("=", 1) for kv in _split_names(opts.get("model_args", "")) if "=" in kv
        )
        for domain, default in DEFAULT_SETS.items():
            names.append(_calib_task(margs.get(f"calib_{domain}", default)))
    return [n for n in names if n]


def shell_tasks(text: str, env: dict[str, str]) -> list[str]:
    """Task names of every lmms-prune / lmms-eval command in a shell snippet."""
    names = []
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)  # a "$ " prompt in the README
        if line.lstrip().startswith("#"):
            continue
        for value in _TASKS_VAR.findall(line):
            if not value.startswith(("$(", '"$(')):  # a folder computed by a command
                names += _split_names(_expand(value.strip("\"'"), env))
        if not re.search(r"lmms-prune|lmms-eval|lmms_eval", line):
            continue
        try:
            words = shlex.split(_expand(line, env), comments=True)
        except ValueError:
            continue
        for i, word in enumerate(words):
            program = None
            if Path(word).name in {"lmms-prune", "lmms-eval"}:
                program, start = Path(word).name, i + 1
            elif word == "lmms_eval" and i > 0 and words[i - 1] == "-m":
                program, start = "lmms-eval", i + 1
            if program:
                argv = []
                for w in words[start:]:
                    if w in {"|", "||", "&&", ";", ">", ">>"}:
                        break
                    argv.append(w)
                names += _command_tasks(argv, program)
                break
    return names


def _yaml_tasks(data, env: dict[str, str]) -> list[str]:
    """Names in a YAML document: ``run:`` scripts, and ``tasks`` / ``calib_*`` keys."""
    names = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "run" and isinstance(value, str):
                names += shell_tasks(value, env)
            elif key == "tasks":
                values = value if isinstance(value, list) else _split_names(str(value))
                names += [str(v) for v in values]
            elif key in {"calib_math", "calib_nonmath"} and isinstance(value, str):
                names.append(_calib_task(value))
            else:
                names += _yaml_tasks(value, env)
    elif isinstance(data, list):
        for value in data:
            names += _yaml_tasks(value, env)
    return [n for n in names if n]


def file_tasks(path: Path) -> list[str]:
    """Task names that one README, recipe or CI file makes lmms-eval load."""
    text = path.read_text()
    if path.suffix in {".yml", ".yaml"}:
        return _yaml_tasks(yaml.safe_load(text), {})
    if path.suffix == ".md":
        return [n for block in _FENCE.findall(text) for n in shell_tasks(block, {})]
    return shell_tasks(text, _shell_vars(path))


def project_files() -> list[Path]:
    recipes = sorted(p for p in (ROOT / "examples" / "recipes").rglob("*") if p.is_file())
    ci = sorted((ROOT / "examples" / "ci").rglob("*.y*ml"))
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *recipes, *ci]


def project_task_names() -> dict[str, list[str]]:
    """Every task name the project names -> the files (or registry) naming it."""
    from lmms_prune_plugin.core.plugins import get_calibration_sets

    sources: dict[str, list[str]] = defaultdict(list)
    for path in project_files():
        for name in dict.fromkeys(file_tasks(path)):
            sources[name].append(str(path.relative_to(ROOT)))
    for cset in get_calibration_sets().values():
        sources[cset.task].append(f"calibration set {cset.name}")
    return dict(sorted(sources.items()))


# --------------------------------------------------------------------------- importing hooks


def _hook_files(config) -> set[str]:
    """Source files of the functions and classes a loaded YAML config refers to."""
    found = set()
    if isinstance(config, dict):
        for value in config.values():
            found |= _hook_files(value)
    elif isinstance(config, list | tuple):
        for value in config:
            found |= _hook_files(value)
    elif inspect.isfunction(config) or inspect.isclass(config):
        try:
            found.add(inspect.getfile(config))
        except TypeError:
            pass
    return found


def _module_file(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


def _import_everything(path: str, task_roots: tuple[str, ...], seen: set[str]) -> None:
    """Import every module ``path`` imports, anywhere in the file; follow task-code modules."""
    if path in seen:
        return
    seen.add(path)
    tree = ast.parse(Path(path).read_text(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for name in modules:
            module = importlib.import_module(name)
            if isinstance(node, ast.ImportFrom):  # from pkg import submodule
                for alias in node.names:
                    if alias.name != "*" and not hasattr(module, alias.name):
                        importlib.import_module(f"{name}.{alias.name}")
            origin = _module_file(name)
            if origin and origin.startswith(task_roots):
                _import_everything(origin, task_roots, seen)


def _leaves(tm, name: str, trail: tuple = ()) -> list[tuple[str, str | dict]]:
    """The tasks that ``name`` stands for: (task name, YAML path or inline config)."""
    from lmms_eval import utils

    if name in trail:
        return []
    if name not in tm.task_index:
        raise LookupError(f"not a task, group or tag lmms-eval {_lmms_eval_version()} knows")
    entry = tm.task_index[name]
    if entry["type"] in {"task", "python_task"}:
        return [(name, entry["yaml_path"])]
    members, leaves = entry["task"], []
    if members == -1:  # a group YAML: its member list (and inline members) live in it
        group = utils.load_yaml_config(entry["yaml_path"], mode="full")
        members, leaves = group["task"], [(name, group)]
    for member in members:
        if isinstance(member, dict):
            leaves.append((member.get("task", name), member))
            member = member.get("task")
        if isinstance(member, str) and member in tm.task_index:
            leaves += _leaves(tm, member, (*trail, name))
    return leaves


def _lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms-eval")


def _missing_module(err: BaseException) -> str | None:
    while err is not None:
        if isinstance(err, ModuleNotFoundError) and err.name:
            return err.name
        err = err.__cause__ or err.__context__
    return None


def _failure(name: str, leaf: str, err: BaseException) -> str:
    where = name if leaf == name else f"{name} (member {leaf})"
    missing = _missing_module(err)
    if missing:
        hint = NODEPS_HINT if missing.split(".")[0] in NODEPS_MODULES else INSTALL_HINT
        return f"{where}: No module named {missing!r} ({hint})"
    if "ANTLR" in str(err):  # latex2sympy2 and latex2sympy2_extended agree only on 4.9.3
        return f"{where}: {type(err).__name__}: {err} ({NODEPS_HINT})"
    return f"{where}: {type(err).__name__}: {err}"


def check_task_code(tm, name: str) -> str | None:
    """None when every hook of ``name`` imports; else a message naming the task and the cause."""
    import lmms_eval.tasks
    from lmms_eval import utils

    include = tm.include_path or []
    folders = [os.path.dirname(lmms_eval.tasks.__file__)]
    folders += [include] if isinstance(include, str) else list(include)
    task_roots = tuple(os.path.join(os.path.abspath(f), "") for f in folders)
    seen: set[str] = set()
    try:
        leaves = _leaves(tm, name)
    except Exception as err:  # any failure: reported with the task name
        return _failure(name, name, err)
    for leaf, config in leaves:
        try:
            if isinstance(config, str):
                config = utils.load_yaml_config(config, mode="full")
            for path in sorted(_hook_files(config)):
                _import_everything(path, task_roots, seen)
        except Exception as err:
            return _failure(name, leaf, err)
    return None

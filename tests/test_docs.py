"""README.md and docs/*.md say what the code does: their commands and links work as written.

- Every ``lmms-prune ...`` command in a fenced code block parses with the current CLI
  (``lmms_prune_plugin.tools.cli.build_parser``).
- Every ``lmms-eval`` command (also ``python -m lmms_eval`` and ``torchrun ... -m lmms_eval``)
  passes only model_args its model takes: for ``pruned_vlm`` its own arguments (``OWN_ARGS``),
  the named ``__init__`` parameters of the base wrapper it would use, and with ``engine=vllm``
  those of lmms-eval's ``vllm`` model and vLLM's engine; for any other model its own named
  parameters. ``lmms-prune``'s ``--model_args`` are checked as ``pruned_vlm``'s.
- Every relative link (and ``#anchor``) points at a file (and a heading) that exists.
- README.md stays short and its Quick start holds exactly the two set-up commands.

How a command is read from the docs (write them so):

- Fenced blocks tagged ``bash``, ``sh``, ``shell``, ``console``, ``text`` or untagged are read;
  other languages (``python``, ``yaml``, ...) are not.
- A trailing ``\\`` joins a line with the next. In a block where some line starts with ``$ ``,
  only those lines are commands (the others are their output); elsewhere every line may be.
- ``$(...)`` becomes the word ``SUBST`` and ``$VAR`` / ``${VAR}`` become ``VAR`` in capitals:
  placeholders. Comments and everything after ``|``, ``&&``, ``;``, ``>`` are dropped.
- In ``--model_args`` an item without ``=`` (``...``) stands for more arguments and is skipped.
- The base wrapper of ``pruned_vlm``: ``base=`` if given; without ``pretrained=``, the packaged
  demo model's; for a checkpoint folder that exists, its config's; for a hub id, its
  ``model_type`` from ``HUB_MODEL_TYPES`` below (a hub id not listed there fails, naming it);
  for a placeholder (``DIR``, ``...``, ``<...>``, ``SUBST/x``) or a local path (``out/...``,
  ``/...``, ``./...``) that does not exist here: the fallback wrapper ``hf_vlm``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from lmms_prune_plugin.tools.cli import HARNESS_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250
SETUP_COMMANDS = ["make demo", "make test"]

# The hub ids the docs name, by model_type (pruned_vlm reads it from the checkpoint's config).
HUB_MODEL_TYPES = {
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen/Qwen3-VL-2B-Instruct": "qwen3_vl",
    "Qwen/Qwen3-VL-4B-Instruct": "qwen3_vl",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava_onevision",
}
# vLLM engine arguments (EngineArgs fields) the docs use; checked against EngineArgs where vLLM
# is installed (the project's own environment has no vLLM).
VLLM_ENGINE_ARGS = {"max_model_len", "pipeline_parallel_size", "mm_processor_kwargs"}

READ_TAGS = {"", "bash", "sh", "shell", "console", "text"}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_VAR = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)")
_PLACEHOLDER = re.compile(r"^(\.\.\.|<.*>|[A-Z][A-Z0-9_]*)$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
MODULES = {"lmms_eval": "lmms-eval", "lmms_prune_plugin.tools.cli": "lmms-prune"}  # python -m ...
_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line of a doc: where it is, which program, its arguments."""

    where: str
    program: str  # "lmms-prune" or "lmms-eval"
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.argv)}"


# --------------------------------------------------------------------------- reading the docs


def fenced_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of every fenced block whose tag is read as shell."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in READ_TAGS:
            blocks.append((text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return blocks


def _logical_lines(first: int, body: str) -> list[tuple[int, str]]:
    """Lines with their ``\\`` continuations joined, numbered by their first line."""
    lines, start, parts = [], None, []
    for n, line in enumerate(body.splitlines(), first):
        start = n if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        lines.append((start, " ".join([*parts, line])))
        start, parts = None, []
    if parts:
        lines.append((start, " ".join(parts)))
    return lines


def _command_substitutions(line: str) -> str:
    """Each ``$(...)`` (parentheses balanced) replaced by the word SUBST."""
    out, i = [], 0
    while (start := line.find("$(", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(line):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            if depth == 0:
                break
            j += 1
        out += [line[i:start], "SUBST"]
        i = j + 1
    return "".join([*out, line[i:]])


def _words(line: str) -> list[str]:
    line = _command_substitutions(line)
    line = _VAR.sub(lambda m: (m.group(1) or m.group(2)).upper(), line)
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose-like output: not a command
        return []


def _command(words: list[str], where: str) -> Command | None:
    """The lmms-prune / lmms-eval command a line starts with (after ``NAME=value`` settings),
    directly or as ``python -m`` / ``torchrun ... -m``; None for any other line."""
    while words and re.match(r"^\w+=", words[0]):
        words = words[1:]
    if not words:
        return None
    if Path(words[0]).name in {"lmms-prune", "lmms-eval"}:
        program, rest = Path(words[0]).name, words[1:]
    elif re.match(r"^(python[\d.]*|torchrun)$", Path(words[0]).name) and "-m" in words:
        i = words.index("-m")
        if i + 1 == len(words) or words[i + 1] not in MODULES:
            return None
        program, rest = MODULES[words[i + 1]], words[i + 2 :]
    else:
        return None
    argv = []
    for w in rest:
        if w in _STOP or w.startswith((">", "2>")):
            break
        argv.append(w)
    return Command(where, program, tuple(argv))


def commands_in(text: str, name: str) -> list[Command]:
    """Every lmms-prune / lmms-eval command of a Markdown text's shell blocks."""
    found = []
    for first, body in fenced_blocks(text):
        lines = _logical_lines(first, body)
        prompted = any(line.startswith("$ ") for _, line in lines)
        for n, line in lines:
            if prompted and not line.startswith("$ "):
                continue
            words = _words(line.removeprefix("$ "))
            if words and words[0].startswith("#"):
                continue
            cmd = _command(words, f"{name}:{n}")
            if cmd is not None:
                found.append(cmd)
    return found


def doc_files() -> list[Path]:
    return [README, *DOCS]


def all_commands() -> list[Command]:
    return [c for p in doc_files() for c in commands_in(p.read_text(), p.relative_to(ROOT).name)]


# --------------------------------------------------------------------------- checking commands


def parse_lmms_prune(argv: tuple[str, ...]):
    """The parsed namespace, or AssertionError with argparse's own message."""
    from lmms_prune_plugin.tools.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(list(argv))
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return None
        raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None


def model_args(text: str) -> dict[str, str]:
    """``key=value,...`` as lmms-eval splits it; items without ``=`` (``...``) are skipped."""
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


@functools.cache
def named_params(model: str, simple: bool) -> frozenset[str]:
    from lmms_prune_plugin.core.loading import named_params
    from lmms_prune_plugin.harnesses.lmms_eval.base import wrapper_class

    return frozenset(named_params(wrapper_class(model, simple)))


@functools.cache
def vllm_params(simple: bool) -> frozenset[str]:
    """What lmms-eval's vllm model takes, and vLLM's engine arguments."""
    from lmms_eval import models

    from lmms_prune_plugin.core.loading import named_params

    names = set(named_params(models.get_model("vllm", force_simple=simple)))
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:  # not installed (tests/vllm alone can look like a vllm package)
        return frozenset(names | VLLM_ENGINE_ARGS)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert VLLM_ENGINE_ARGS <= fields, f"not vLLM engine arguments: {VLLM_ENGINE_ARGS - fields}"
    return frozenset(names | fields)


def assumed_base(margs: dict[str, str]) -> str:
    """The base wrapper pruned_vlm would use for these model_args (see the module docstring)."""
    from lmms_prune_plugin.harnesses.lmms_eval.base import FALLBACK_WRAPPER, WRAPPERS

    if "base" in margs:
        return margs["base"]
    pretrained = margs.get("pretrained")
    if pretrained is None:
        from lmms_prune_plugin.demo.model import DEMO_MODEL_DIR

        return _folder_base(DEMO_MODEL_DIR)
    if _PLACEHOLDER.match(pretrained):
        return FALLBACK_WRAPPER
    if Path(pretrained, "config.json").is_file():
        return _folder_base(Path(pretrained))
    local = pretrained.startswith(("out/", "/", ".", "~")) or _PLACEHOLDER.match(
        pretrained.split("/")[0]
    )
    if _HUB_ID.match(pretrained) and not local:
        assert pretrained in HUB_MODEL_TYPES, (
            f"pretrained={pretrained} is a hub id that HUB_MODEL_TYPES in {Path(__file__).name} "
            "does not list: add its model_type"
        )
        return WRAPPERS.get(HUB_MODEL_TYPES[pretrained], FALLBACK_WRAPPER)
    return FALLBACK_WRAPPER


def _folder_base(folder: Path) -> str:
    import json

    from lmms_prune_plugin.harnesses.lmms_eval.base import pick_wrapper

    return pick_wrapper(json.loads((Path(folder) / "config.json").read_text()))


def check_pruned_vlm_args(margs: dict[str, str], simple: bool, engine: str = "hf") -> None:
    """Every key is pruned_vlm's, its base wrapper's or (engine=vllm) vLLM's."""
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import OWN_ARGS

    base = assumed_base(margs)
    allowed = set(OWN_ARGS) | named_params(base, simple)
    if margs.get("engine", engine) == "vllm":
        allowed |= vllm_params(simple)
    unknown = sorted(set(margs) - allowed)
    assert not unknown, (
        f"model_args {unknown} are not arguments of pruned_vlm or of its base wrapper {base!r}"
        f"{' or of vLLM' if margs.get('engine', engine) == 'vllm' else ''}"
    )


def lmms_eval_options(argv: tuple[str, ...]) -> dict[str, str]:
    opts, it = {}, iter(argv)
    for word in it:
        if word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            opts[key] = value
        elif word.startswith("--"):
            nxt = next(it, "")
            opts[word[2:]] = nxt
            if nxt.startswith("--"):  # a flag without value (--force_simple)
                opts[word[2:]] = ""
                opts[nxt[2:]] = next(it, "")
    return opts


def check_harness_command(name: str, argv: list[str]) -> None:
    """``lmms-prune vlmeval``: our launcher's own flags parse; ``lmms-prune lm-eval``: it runs
    one of our models, whose model_args are pruned_vlm's option records."""
    if name == "vlmeval":
        from lmms_prune_plugin.harnesses.vlmeval import check_ours, split_args

        ours, _ = split_args(argv)
        assert ours.model, "lmms-prune vlmeval needs --model"
        if ours.prune is not None:
            check_ours(ours)
        return
    opts = lmms_eval_options(tuple(argv))
    assert opts.get("model") in {"pruned_vlm", "pruned_lm"}, f"--model {opts.get('model')!r}"
    from lm_eval.models.hf_vlms import HFMultimodalLM

    from lmms_prune_plugin.core.calibration import CalibrationOptions
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.harnesses.lmms_eval.arguments import LoadOptions

    ours = set(LoadOptions.names()) | set(CalibrationOptions.names()) | set(PruneOptions.names())
    from lmms_prune_plugin.core.loading import named_params

    harness = set(named_params(HFMultimodalLM))
    unknown = set(model_args(opts.get("model_args", ""))) - ours - harness
    assert not unknown, f"model_args {sorted(unknown)} are neither ours nor lm-eval's"


def check_command(cmd: Command) -> None:
    """AssertionError naming what in ``cmd`` the current code would refuse."""
    if cmd.program == "lmms-prune" and cmd.argv and cmd.argv[0] in HARNESS_COMMANDS:
        check_harness_command(cmd.argv[0], list(cmd.argv[1:]))
        return
    if cmd.program == "lmms-prune":
        args = parse_lmms_prune(cmd.argv)
        if args is not None and getattr(args, "model_args", ""):
            simple = bool(getattr(args, "force_simple", False))
            engine = getattr(args, "engine", "hf")
            check_pruned_vlm_args(model_args(args.model_args), simple, engine)
        return
    opts = lmms_eval_options(cmd.argv)
    model, simple = opts.get("model"), "force_simple" in opts
    assert model, "an lmms-eval command without --model"
    margs = model_args(opts.get("model_args", ""))
    if model == "pruned_vlm":
        check_pruned_vlm_args(margs, simple)
    else:
        unknown = sorted(set(margs) - named_params(model, simple))
        assert not unknown, f"model_args {unknown} are not arguments of lmms-eval's {model!r}"


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose = _FENCE.sub("", text)
    seen: dict[str, int] = {}
    found = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(text: str) -> list[str]:
    """Targets of Markdown links and images outside code."""
    prose = re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in links(path.read_text()):
        if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


# --------------------------------------------------------------------------- tests

COMMANDS = all_commands()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.where)
def test_doc_command_works_with_the_code(cmd):
    try:
        check_command(cmd)
    except AssertionError as err:
        raise AssertionError(f"{cmd}\n  {err}") from None


def test_docs_show_every_subcommand_and_the_headline():
    shown = {c.argv[0] for c in COMMANDS if c.program == "lmms-prune" and c.argv}
    assert {"rank", "export", "sweep", "heal", "list", "report", *HARNESS_COMMANDS} <= shown
    readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    headline = [c for c in readme if c.program == "lmms-eval" and "pruned_vlm" in c.argv]
    assert headline, "README.md shows no lmms-eval command with pruned_vlm"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_judge_tasks_name_their_key():
    """A doc that runs a task whose lmms-eval code builds a GPT-judge client on import says
    that it needs OPENAI_API_KEY."""
    judged = ("mathvista", "mathverse")
    for path in doc_files():
        text = path.read_text()
        cmds = commands_in(text, path.name)
        named = [c for c in cmds if any(j in " ".join(c.argv) for j in judged)]
        assert not named or "OPENAI_API_KEY" in text, f"{named[0]} without OPENAI_API_KEY"


def _section(text: str, title: str) -> str:
    m = re.search(rf"^(#+)\s+{title}\b.*?$(.*?)(?=^#{{1,2}}\s|\Z)", text, re.M | re.S | re.I)
    assert m, f"README.md has no {title!r} section"
    return m.group(2)


def test_readme_is_short_and_starts_with_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    quick = _section(text, "Quick start")
    lines = [
        re.sub(r"\s+#.*$", "", line).strip()
        for _, body in fenced_blocks(quick)
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == SETUP_COMMANDS
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):  # each builds the environment it needs first
        assert re.search(rf"^{target}:.*\binstall\b", makefile, re.M), target
    assert "-m venv" in makefile


# --------------------------------------------------------------------------- the checks fail


def test_checks_catch_a_bad_doc(tmp_path):
    """The collector finds commands the way the docs write them, and the checks refuse a
    misspelt flag, an unknown model_arg, a base wrapper's argument on the wrong base and a
    broken link."""
    doc = tmp_path / "bad.md"
    doc.write_text(
        "# Title\n\n[ok](#title) [gone](missing.md) [anchor](bad.md#nowhere)\n\n"
        "```text\n$ lmms-prune rank --budgte 4\nrank 1 = removed first\n"
        '$ lmms-prune export --criterion math \\\n    --budget 4 --out "$OUT"\n```\n\n'
        "```bash\nlmms-eval --model pruned_vlm --model_args criterion=math,buget=2 --tasks ai2d\n"
        "torchrun --nproc_per_node 2 -m lmms_eval --model pruned_vlm \\\n"
        "  --model_args pretrained=DIR,min_pixels=1 | tee log  # hf_vlm has no min_pixels\n"
        "lmms-eval --model pruned_vlm --model_args pretrained=$(pwd)/x,max_model_len=8\n```\n"
        "```python\nlmms-prune nothing here\n```\n"
    )
    cmds = commands_in(doc.read_text(), "bad.md")
    assert [c.where for c in cmds] == [f"bad.md:{n}" for n in (6, 8, 13, 14, 16)]
    assert cmds[1].argv == ("export", "--criterion", "math", "--budget", "4", "--out", "OUT")
    outcomes = []
    for cmd in cmds:
        try:
            check_command(cmd)
            outcomes.append("ok")
        except AssertionError as err:
            outcomes.append(str(err))
    assert "--budgte" in outcomes[0]
    assert outcomes[1] == "ok"
    assert "buget" in outcomes[2]
    assert "min_pixels" in outcomes[3] and "hf_vlm" in outcomes[3]
    assert "max_model_len" in outcomes[4]  # a vLLM argument without engine=vllm
    assert broken_links(doc) == [
        "missing.md: no such file",
        "bad.md#nowhere: no heading #nowhere in bad.md",
    ]


def test_every_option_of_every_record_is_documented():
    """A new option is one field of an option record; it reaches model_args and the CLI from
    there, and this test makes it reach the docs too."""
    from lmms_prune_plugin.core.calibration import CalibrationOptions
    from lmms_prune_plugin.core.heal import HealOptions
    from lmms_prune_plugin.core.planner import PruneOptions
    from lmms_prune_plugin.harnesses.lmms_eval.arguments import LoadOptions

    docs = (ROOT / "docs" / "options.md").read_text() + (ROOT / "docs" / "healing.md").read_text()
    for record in (LoadOptions, CalibrationOptions, PruneOptions, HealOptions):
        flags = [record.flag_name(n) for n in record.names()]
        missing = [f for f in flags if f"`{f}" not in docs and f"--{f}" not in docs]
        assert not missing, f"{record.__name__}: {missing} are in no table of docs/options.md"

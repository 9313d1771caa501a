"""The pure modules on hand-made inputs: similarity (masks and masked sums), args (strict
parsing), options (option records)."""

import argparse
import math
from dataclasses import dataclass

import pytest
import torch

from lmms_prune_plugin.core import args, similarity
from lmms_prune_plugin.core.options import OptionRecord, choose, option, parse_list


# ------------------------------------------------------------------ similarity
def test_token_mask_never_counts_padding_and_picks_the_last_real_token():
    attn = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])  # left and right padding
    assert similarity.token_mask(2, 4, "all", attn).tolist() == attn.bool().tolist()
    last = similarity.token_mask(2, 4, "last", attn)
    assert last.tolist() == [[False, False, False, True], [False, False, True, False]]


def test_token_mask_splits_image_and_text_tokens():
    ids = torch.tensor([[5, 9, 9, 7]])
    attn = torch.tensor([[1, 1, 1, 1]])
    image = similarity.token_mask(1, 4, "image", attn, ids, image_token_ids=(9,))
    text = similarity.token_mask(1, 4, "text", attn, ids, image_token_ids=(9,))
    assert image.tolist() == [[False, True, True, False]]
    assert (image ^ text).all()
    with pytest.raises(ValueError, match="needs the model config to name its image token"):
        similarity.token_mask(1, 4, "image", attn, ids)
    with pytest.raises(ValueError, match="tokens='words' is not allowed"):
        similarity.token_mask(1, 4, "words")


def test_masked_sums_count_only_weighted_positions():
    h = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    out = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])  # cos 1, 0, -1
    weight = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    total, finite = similarity.masked_cosine_sum(h, out, weight)
    assert total.item() == pytest.approx(1.0) and bool(finite)
    rows, _ = similarity.masked_cosine_rows(h, out, weight)
    assert rows.tolist() == pytest.approx([1.0])
    angles = similarity.masked_angular_rows(h, out, torch.ones(1, 3, dtype=torch.float64))
    assert angles.tolist() == pytest.approx([0.0 + 0.5 + 1.0])


def test_non_finite_cosines_are_reported_not_summed():
    h = torch.tensor([[[math.nan, 0.0], [1.0, 0.0]]])
    total, finite = similarity.masked_cosine_sum(h, h, torch.ones(1, 2, dtype=torch.float64))
    assert not bool(finite) and math.isfinite(total.item())


def test_answer_logprobs_and_kl():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]])
    last = torch.tensor([[False, True, False]])
    lp = similarity.answer_logprobs(logits, last)
    assert lp.exp().sum().item() == pytest.approx(1.0)
    assert lp[0, 0] > lp[0, 1]
    assert similarity.kl_rows(lp, lp).tolist() == [0.0]
    other = torch.log_softmax(torch.tensor([[0.0, 2.0]]), dim=-1)
    assert similarity.kl_rows(lp, other).item() > 0
    with pytest.raises(ValueError, match="right padding"):
        similarity.answer_logprobs(logits[:, -1:], last)


# ------------------------------------------------------------------ args
@pytest.mark.parametrize("word, want", [("yes", True), ("OFF", False), (1, True), (0.0, False)])
def test_parse_bool_words(word, want):
    assert args.parse_bool("x", word) is want


@pytest.mark.parametrize("value", ["maybe", 2, None, ""])
def test_parse_bool_refuses_other_values(value):
    with pytest.raises(ValueError, match="x=.* is not allowed; give true or false"):
        args.parse_bool("x", value)


def test_parse_int_and_float():
    assert args.parse_int("n", "3") == 3 and args.parse_int("n", 3.0) == 3
    assert args.parse_int("n", "none", allow_none=True) is None
    with pytest.raises(ValueError, match=r"n=1.5 is not allowed; give an integer >= 0"):
        args.parse_int("n", 1.5, minimum=0)
    with pytest.raises(ValueError, match="give a finite number"):
        args.parse_float("f", "inf")


def test_reject_empty_and_closest():
    with pytest.raises(ValueError, match="plan='' is not allowed: it is empty"):
        args.reject_empty("plan", "")
    args.reject_empty("plan", "x")
    assert "did you mean 'budget'" in args.closest("buget", ["budget", "alpha"])
    assert args.closest("zzz", ["budget"]) == ""


def test_read_small_file_refuses_folders_devices_and_large_files(tmp_path):
    with pytest.raises(ValueError, match="it is a folder"):
        args.read_small_file("f", tmp_path)
    with pytest.raises(ValueError, match="not a regular file"):
        args.read_small_file("f", "/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 20)
    with pytest.raises(ValueError, match="larger than"):
        args.read_small_file("f", big, limit=10)
    assert args.read_small_file("f", big, limit=20) == "x" * 20


def test_check_writable_probes_by_creating_a_file(tmp_path):
    assert args.check_writable("out", tmp_path / "a" / "b") == tmp_path / "a" / "b"
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    with pytest.raises(ValueError, match="is not a writable folder"):
        args.check_writable("out", blocker / "x")
    with pytest.raises(ValueError, match="out='/proc/x' is not allowed"):
        args.check_writable("out", "/proc/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing


# ------------------------------------------------------------------ option records
@dataclass(frozen=True)
class Demo(OptionRecord):
    title = "demo options"
    count: int = option(2, "how many", minimum=1)
    ratio: float = option(0.5, "a share", minimum=0, maximum=1)
    mode: str = option("a", "which", choices=("a", "b"))
    items: tuple[str, ...] = option(("x",), "a list")
    folder: str | None = option(None, "a folder", none=True)
    flag: bool = option(False, "on or off")


def test_records_parse_by_declared_type():
    d = Demo.parse(count="3", ratio="0.25", mode="b", items="p,q", folder="none", flag="yes")
    assert d == Demo(3, 0.25, "b", ("p", "q"), None, True)
    assert Demo.parse() == Demo()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"count": "0"}, r"count='0' is not allowed; give an integer >= 1"),
        ({"ratio": 2}, r"ratio=2.0 is not allowed; it must be in \[0, 1\]"),
        ({"mode": "c"}, r"mode='c' is not allowed; choose one of: a, b"),
        ({"items": "p,,q"}, r"items='p,,q' is not allowed: it has an empty item"),
        ({"folder": ""}, r"folder='' is not allowed: it is empty"),
        ({"flag": "perhaps"}, r"flag='perhaps' is not allowed; give true or false"),
        ({"cuont": 3}, r"cuont=3 is not one of the demo options \(did you mean 'count'\?\)"),
    ],
)
def test_records_refuse_bad_values_naming_them(raw, message):
    with pytest.raises(ValueError, match=message):
        Demo.parse(**raw)


def test_records_derive_cli_flags_with_help_and_empty_checks(capsys):
    parser = argparse.ArgumentParser()
    Demo.add_flags(parser, skip=("flag",), count="5")
    ns = parser.parse_args(["--mode", "b"])
    assert Demo.given(ns) == {"count": "5", "mode": "b"}
    assert not hasattr(ns, "flag")
    assert "which (one of: a, b)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", ""])
    assert "mode='' is not allowed: it is empty" in capsys.readouterr().err


def test_choose_and_lists():
    assert choose("m", "a", ["a"]) == "a"
    with pytest.raises(ValueError, match=r"m='aa' is not allowed \(did you mean 'a'\?\)"):
        choose("m", "aa", ["a"])
    assert parse_list("l", ["a", " b"]) == ("a", "b")
    assert "| `count` | `2` | how many |" in Demo.table()


def test_padding_may_hold_non_finite_values():
    h = torch.tensor([[[1.0, 0.0], [math.nan, 0.0]]])
    weight = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # the nan sits in padding
    total, finite = similarity.masked_cosine_sum(h, h, weight)
    assert bool(finite) and total.item() == pytest.approx(1.0)
    rows, finite = similarity.masked_cosine_rows(h, h, weight)
    assert bool(finite) and rows.tolist() == pytest.approx([1.0])


def test_the_core_imports_no_harness():
    """``import lmms_prune_plugin`` and the core import neither lmms-eval, lm-eval nor
    VLMEvalKit (VLMEvalKit turns certificate checks off for the whole process)."""
    import subprocess
    import sys

    code = (
        "import sys, lmms_prune_plugin, lmms_prune_plugin.core.planner, "
        "lmms_prune_plugin.core.heal, lmms_prune_plugin.surgery.export\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lmms_eval', 'lm_eval', 'vlmeval'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

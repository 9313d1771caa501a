"""The HTML leaderboard as a person sees it: rows of three harnesses, built from hand-made rows,
opened in headless Chromium (the DOM after the page's script ran, and a screenshot)."""

import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from lmms_prune_plugin.tools.leaderboard_html import to_html
from lmms_prune_plugin.tools.plots import accuracy_vs_budget
from lmms_prune_plugin.tools.report import leaderboard, series_regimes

#: A model name is user input: markup in it must show as text, never run.
MODEL = 'org/<b>tiny</b> & "vlm"<script>document.title="pwned"</script>'
DOCS = 60
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


def docs(p: float, seed: int) -> list[float]:
    v = np.zeros(DOCS)
    v[: round(p * DOCS)] = 1
    np.random.default_rng(seed).shuffle(v)
    return v.tolist()


def row(harness, criterion, strategy, budget, math, gen, per_doc=False, tasks=None):
    math_task, gen_task = tasks or ("prune_demo_math", "prune_demo_nonmath")
    metric = "Overall" if harness == "vlmeval" else "exact_match,none"
    out = {
        "model": MODEL,
        "criterion": criterion,
        "strategy": strategy,
        "budget": budget,
        "kept_layers": 12 - budget,
        "removed": list(range(budget)),
        "harness": harness,
        "tasks": [gen_task, math_task],
        "metrics": {math_task: {metric: math}, gen_task: {metric: gen}},
    }
    if per_doc:  # lmms-eval sweeps keep each document's result: intervals
        values = {math_task: docs(math, budget), gen_task: docs(gen, budget + 50)}
        out["per_doc"] = {
            t: {"metric": metric, "doc_ids": list(range(DOCS)), "values": v}
            for t, v in values.items()
        }
        out["metrics"] = {t: {metric: float(np.mean(v))} for t, v in values.items()}
    return out


def rows() -> list[dict]:
    sweep = [
        ("none", "none", 0, 0.95, 0.9),
        ("math", "topk", 2, 0.8, 0.85),
        ("nonmath", "topk", 2, 0.6, 0.85),
        ("math", "topk", 10, 0.1, 0.3),
    ]
    out = [row("lmms-eval", *r, per_doc=True) for r in sweep]
    out += [
        row("lm-eval", "none", "none", 0, 0.9, 0.88),
        row("lm-eval", "math", "topk", 2, 0.7, 0.8),
    ]
    demo = ("PruneDemo_Math", "PruneDemo_Nonmath")
    out += [row("vlmeval", "math", "topk", 2, 0.655, 0.92, tasks=demo)]
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The board, and its page written as ``report`` writes it (plot included)."""
    folder = tmp_path_factory.mktemp("html")
    board = leaderboard(rows())
    per, _ = series_regimes(board, replicates=200)
    groups = {"math_avg": "math tasks", "general_avg": "general tasks"}
    png = accuracy_vs_budget(board.records, groups, folder / "plot.png", "accuracy")
    path = folder / "leaderboard.html"
    path.write_text(to_html(board, per, {"accuracy against layers removed": png.read_bytes()}))
    return board, path


# --------------------------------------------------------------------------- the file
def test_strings_from_rows_are_escaped_and_nothing_is_fetched(page):
    board, path = page
    text = path.read_text()
    assert "<script>document.title" not in text and "<b>tiny</b>" not in text
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in text
    assert text.count("<script>") == 1  # the page's own
    # self-contained: every src or href is inline data, and the policy forbids fetching
    assert re.findall(r'(?:src|href)="(?!data:)', text) == []
    assert "default-src 'none'" in text and "@import" not in text
    assert any(r.get("overall_ci") for r in board.records)  # the lmms-eval rows' intervals
    assert "±" in text


# --------------------------------------------------------------------------- in Chromium
class _Board(HTMLParser):
    """The leaderboard table of a DOM dump: column names, and each row's cell texts."""

    def __init__(self):
        super().__init__()
        self.cols, self.rows, self.attrs = [], [], {}
        self._in, self._cell, self._text = None, False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "board":
            self._in, self.attrs["table"] = "board", a
        elif tag == "img":
            self.attrs.setdefault("img", []).append(a)
        elif self._in and tag == "th":
            self.cols.append(a["data-col"])
            self.attrs.setdefault("th", []).append(a)
        elif self._in and tag == "tr" and self.cols:
            self.rows.append([])
        elif self._in and tag == "td":
            self._cell, self._text = True, []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell:
            self.rows[-1].append("".join(self._text).strip())
            self._cell = False
        elif tag == "table":
            self._in = None

    def handle_data(self, data):
        if self._cell:
            self._text.append(data)

    def records(self) -> list[dict]:
        return [dict(zip(self.cols, r, strict=True)) for r in self.rows]


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("no chromium binary to open the page in: apt-get install chromium")
    cmd = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def dom(tmp_path, path, query="") -> tuple[_Board, str]:
    text = chromium(tmp_path, "--dump-dom", f"{path.as_uri()}{query}").stdout
    parsed = _Board()
    parsed.feed(text)
    return parsed, text


def _number(cell: str) -> float | None:
    return None if cell == "-" else float(cell.split("±")[0])


def test_the_page_shows_every_row_its_harness_and_a_decoded_plot(page, tmp_path):
    board, path = page
    shown, text = dom(tmp_path, path)
    assert len(shown.rows) == len(board.records)
    got = shown.records()
    assert [r["harness"] for r in got] == [r["harness"] for r in board.records]
    assert {r["harness"] for r in got} == {"lmms-eval", "lm-eval", "vlmeval"}
    assert [r["method"] for r in got] == [r["method"] for r in board.records]
    assert [_number(r["overall"]) for r in got] == [round(r["overall"], 1) for r in board.records]
    # the plot decoded at its full width (the page's script read naturalWidth)
    (img,) = shown.attrs["img"]
    assert img["data-natural-width"] == "1430"
    # the model's markup stayed text: no second script ran, the title is the page's
    assert text.count("<script") == 1
    assert "<title>Layer-pruning leaderboard</title>" in text
    assert 'org/&lt;b&gt;tiny&lt;/b&gt; &amp; "vlm"&lt;script&gt;' in text


@pytest.mark.parametrize(
    "query, col, want",
    [
        ("?sort=overall&dir=asc", "overall", "ascending"),
        ("?sort=overall", "overall", "descending"),  # a number's first click: best first
        ("?sort=budget&dir=desc", "budget", "descending"),
        ("?sort=method", "method", "ascending"),
    ],
)
def test_clicking_a_header_sorts_numbers_numerically(page, tmp_path, query, col, want):
    board, path = page
    shown, _ = dom(tmp_path, path, query)
    assert shown.attrs["table"]["data-sorted"] == f"{col}:{want}"
    sorted_th = [th for th in shown.attrs["th"] if th.get("aria-sort")]
    assert [(th["data-col"], th["aria-sort"]) for th in sorted_th] == [(col, want)]
    cells = [r[col] for r in shown.records()]
    keys = [_number(c) for c in cells] if col != "method" else cells
    assert len(keys) == len(board.records)
    present = [k for k in keys if k is not None]
    expect = sorted(present, reverse=want == "descending") + [None] * (len(keys) - len(present))
    if col == "budget":  # 10 after 2: numerically, not as text
        assert keys == expect and keys.index(10.0) < keys.index(2.0)
    else:
        assert keys == expect


def test_the_screenshot_shows_the_board(page, tmp_path):
    from PIL import Image

    _, path = page
    shot = tmp_path / "leaderboard.png"
    chromium(tmp_path, "--window-size=1440,1800", f"--screenshot={shot}", path.as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1440, 1800)
    pixels = np.asarray(image).reshape(-1, 3)
    inked = (pixels.min(axis=1) < 200).mean()  # text, badges, lines and the plot
    assert 0.02 < inked < 0.6
    assert len(np.unique(pixels, axis=0)) > 200  # badges and plot colours, not a blank page

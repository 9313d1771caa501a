"""The leaderboard as one self-contained HTML page, for publishing from CI.

Inline CSS and JavaScript, plots embedded as base64 PNG, and a content security policy that
lets the page load nothing from anywhere. Every string taken from rows (model names, task
names, methods) is escaped. The table sorts when a header is clicked (numbers numerically,
empty cells last); ``?sort=<column>&dir=asc|desc`` opens it sorted, through the same click.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape

from lmms_prune_plugin.tools.report import GROUPS, Leaderboard, board_columns, notes

_HARNESS_CLASS = {"lmms-eval": "h-lmms", "lm-eval": "h-lmeval", "vlmeval": "h-vlm"}
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_HEADINGS = {
    "kept_layers": "kept",
    "math_avg": "math avg",
    "general_avg": "general avg",
    "overall": "overall",
}

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--bg:#fff;--panel:#f6f8fb;--line:#e3e8ef;--accent:#2f6fde;
--stripe:#fafbfd;--hover:#eef4ff}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--muted:#9aa4b2;--bg:#14171c;
--panel:#1b2028;--line:#2b323d;--accent:#7aa7ff;--stripe:#181c23;--hover:#1f2a3a}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1480px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:32px 0 10px}
.sub{color:var(--muted);margin:0 0 14px}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0 0}
.chip{background:var(--panel);border:1px solid var(--line);border-radius:999px;padding:3px 11px;
font-size:12.5px}
.chip b{font-variant-numeric:tabular-nums}
.tools{display:flex;align-items:center;gap:12px;margin:18px 0 8px;color:var(--muted);
font-size:12.5px}
.tools input{font:inherit;padding:6px 10px;border:1px solid var(--line);border-radius:6px;
background:var(--bg);color:var(--fg);min-width:240px}
.wrap{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);white-space:nowrap;text-align:left}
thead th{position:sticky;top:0;background:var(--panel);font-weight:600;font-size:12px;
color:var(--muted);text-transform:none}
#board thead th{cursor:pointer;user-select:none}
#board thead th:hover{color:var(--fg)}
#board thead th::after{content:"\\2195";opacity:.3;margin-left:4px;font-size:11px}
#board thead th[aria-sort=ascending]::after{content:"\\25B2";opacity:.9;color:var(--accent)}
#board thead th[aria-sort=descending]::after{content:"\\25BC";opacity:.9;color:var(--accent)}
tbody tr:nth-child(even){background:var(--stripe)}
tbody tr:hover{background:var(--hover)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.group{font-weight:600}
td.na{color:var(--muted)}
td.model{max-width:320px;overflow:hidden;text-overflow:ellipsis}
.ci{color:var(--muted);font-weight:400;font-size:11.5px;margin-left:3px}
tr.base td{background:rgba(47,111,222,.06)}
.badge{display:inline-block;border-radius:4px;padding:1px 7px;font-size:11.5px;font-weight:600;
border:1px solid transparent}
.h-lmms{background:#e3ecff;color:#1f4fb4;border-color:#c6d7ff}
.h-lmeval{background:#dff5e6;color:#17683a;border-color:#bfe8cd}
.h-vlm{background:#f1e4ff;color:#6a2bb0;border-color:#dfc6ff}
.h-other{background:#eee;color:#333}
.r-low{background:#fdeaea;color:#a12626}.r-moderate{background:#fff3d6;color:#8a5a00}
.r-high{background:#e2f6ea;color:#17683a}
figure{margin:0;background:var(--panel);border:1px solid var(--line);border-radius:8px;
padding:12px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto;background:#fff;
border-radius:4px}
figure.broken::before{content:"this plot could not be decoded";color:#a12626}
figcaption{color:var(--muted);font-size:12.5px;margin-top:8px;text-align:center}
p.rule{color:var(--muted);font-size:12.5px;margin:14px 0 6px}
ul.notes{color:var(--muted);font-size:12.5px;padding-left:18px}
footer{color:var(--muted);font-size:12px;margin-top:28px}
"""

_JS = """
(function () {
  var table = document.getElementById("board");
  var tbody = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function value(row, i) {
    var v = row.cells[i].getAttribute("data-sort");
    if (v === null || v === "") return null;
    var n = Number(v);
    return heads[i].getAttribute("data-type") === "num" && !isNaN(n) ? n : v.toLowerCase();
  }
  function sortBy(i, dir) {
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(tbody.rows).map(function (r, k) {
      return [r, value(r, i), k];
    });
    rows.sort(function (a, b) {
      if (a[1] === null || b[1] === null) {
        return a[1] === b[1] ? a[2] - b[2] : a[1] === null ? 1 : -1;  // empty cells last
      }
      if (a[1] < b[1]) return -sign;
      if (a[1] > b[1]) return sign;
      return a[2] - b[2];
    });
    rows.forEach(function (r) { tbody.appendChild(r[0]); });
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    heads[i].setAttribute("aria-sort", dir);
    table.setAttribute("data-sorted", heads[i].getAttribute("data-col") + ":" + dir);
  }
  heads.forEach(function (th, i) {
    th.addEventListener("click", function () {
      var now = th.getAttribute("aria-sort");
      var first = th.getAttribute("data-type") === "num" ? "descending" : "ascending";
      var next = now ? (now === "ascending" ? "descending" : "ascending") : first;
      sortBy(i, next);
    });
  });
  var query = new URLSearchParams(window.location.search);
  var want = query.get("sort");
  heads.forEach(function (th) {
    if (th.getAttribute("data-col") !== want) return;
    th.click();  // a shared link opens the board sorted, through the header's own click
    var dir = query.get("dir") === "asc" ? "ascending" : query.get("dir") === "desc"
      ? "descending" : null;
    if (dir && th.getAttribute("aria-sort") !== dir) th.click();
  });
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {
    var q = filter.value.toLowerCase();
    Array.prototype.forEach.call(tbody.rows, function (r) {
      r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("img.plot"), function (img) {
    function mark() {  // a plot that did not decode says so instead of leaving a hole
      img.setAttribute("data-natural-width", String(img.naturalWidth));
      if (!img.naturalWidth) img.parentNode.classList.add("broken");
    }
    if (img.complete) mark(); else { img.addEventListener("load", mark);
      img.addEventListener("error", mark); }
  });
})();
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _columns(board: Leaderboard) -> list[str]:
    """The Markdown's columns, with harness and engine moved beside the method."""
    cols = [c for c in board_columns(board) if c not in ("harness", "engine")]
    at = cols.index("method") + 1
    return cols[:at] + ["harness", "engine"] + cols[at:]


def _cell(rec: dict, col: str, kind: str) -> str:
    """One ``<td>``: what is shown, and in ``data-sort`` what it sorts by."""
    v = rec.get(col)
    if v is None or v == []:
        return f'<td class="{kind} na" data-sort="">-</td>'
    if col == "harness":
        cls = _HARNESS_CLASS.get(str(v), "h-other")
        return f'<td data-sort="{_e(v)}"><span class="badge {cls}">{_e(v)}</span></td>'
    if isinstance(v, list):
        return f'<td data-sort="{len(v)}">{_e(" ".join(map(str, v)))}</td>'
    if col == "model":
        return f'<td class="model" data-sort="{_e(v)}" title="{_e(v)}">{_e(v)}</td>'
    if not _number(v):
        return f'<td data-sort="{_e(v)}">{_e(v)}</td>'
    shown = f"{v:.1f}" if isinstance(v, float) else str(v)
    ci = rec.get(f"{col}_ci")
    if ci:
        half = (ci[1] - ci[0]) / 2
        tip = f"bootstrap interval [{ci[0]:.1f}, {ci[1]:.1f}]"
        shown += f'<span class="ci" title="{_e(tip)}">±{half:.1f}</span>'
    return f'<td class="{kind}" data-sort="{v!r}">{shown}</td>'


def _board_table(board: Leaderboard) -> str:
    cols = _columns(board)
    numeric = {c for c in cols if any(_number(r.get(c)) for r in board.records)}
    heads = []
    for c in cols:
        kind = "num" if c in numeric else "text"
        cls = ' class="num"' if kind == "num" else ""
        label = _HEADINGS.get(c, c)
        heads.append(f'<th data-col="{_e(c)}" data-type="{kind}"{cls}>{_e(label)}</th>')
    body = []
    for r in board.records:
        kinds = {c: ("num group" if c in GROUPS else "num") if c in numeric else "" for c in cols}
        cells = "".join(_cell(r, c, kinds[c]) for c in cols)
        body.append(f"<tr{' class=base' if r['budget'] == 0 else ''}>{cells}</tr>")
    return (
        '<div class="wrap"><table id="board"><thead><tr>'
        + "".join(heads)
        + "</tr></thead><tbody>"
        + "\n".join(body)
        + "</tbody></table></div>"
    )


def _regime_cells(p: dict, named: bool, series: list) -> list[str]:
    key = (p.get("model"), p.get("harness"), p.get("engine"))
    varying = [v for i, v in enumerate(key) if len({k[i] for k in series}) > 1]
    label = [" · ".join(map(str, varying))] if named else []
    tag = f'<span class="badge r-{_e(p["regime"])}">{_e(p["regime"])}</span>'
    if "tied_with_leader" in p:
        ci = p.get("leader_ci")
        score = f"{p['leader_score']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        rest = [
            score,
            ", ".join(p["tied_with_leader"]) or "-",
            "yes" if p["family_converged"] else "no",
            "yes" if p["spacing_leads"] else "no",
        ]
    else:
        rest = [f"{p['leader_score']:.1f}", f"{p['spread']:.1f}"]
    values = [*label, p["budget"], p["methods"], p["leader"], *rest]
    return [_e(v) for v in values] + [tag]


def _regimes_table(regime_rows: list[dict]) -> str:
    if not regime_rows:
        return ""
    series = sorted({(p.get("model"), p.get("harness"), p.get("engine")) for p in regime_rows})
    named = len(series) > 1
    blocks = []
    for with_ci in (True, False):
        rows = [p for p in regime_rows if ("tied_with_leader" in p) == with_ci]
        if not rows:
            continue
        rest = (
            [
                "leader score [interval]",
                "indistinguishable from the leader",
                "family converged",
                "spacing-aware leads significantly",
            ]
            if with_ci
            else ["leader score", "spread (points)"]
        )
        head = (["series"] if named else []) + ["budget", "methods", "leader", *rest, "regime"]
        lines = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
        for p in rows:
            cells = _regime_cells(p, named, series)
            lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        rule = (
            "By intervals: a paired bootstrap over documents"
            if with_ci
            else "By the spread rule: these rows hold no per-document results"
        )
        blocks.append(
            f'<p class="rule">{rule}</p><div class="wrap"><table class="regimes"><thead>'
            + lines[0]
            + "</thead><tbody>"
            + "".join(lines[1:])
            + "</tbody></table></div>"
        )
    return "<h2>Regimes</h2>" + "".join(blocks)


_HOW_TO_READ = (
    "One line per method of each harness and engine, from its own unpruned model at budget 0; "
    "markers: circle lmms-eval, square lm-eval, triangle vlmeval; dashed: spacing-aware "
    "strategies; shaded: bootstrap intervals."
)


def _figures(plots: Mapping[str, bytes]) -> str:
    out = []
    for caption, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure><img class="plot" alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}: {_e(_HOW_TO_READ)}</figcaption></figure>"
        )
    return "<h2>Plots</h2>" + "".join(out) if out else ""


def _summary(board: Leaderboard) -> str:
    models = sorted({r["model"] for r in board.records})
    counts: dict[str, int] = {}
    for r in board.records:
        counts[r["harness"]] = counts.get(r["harness"], 0) + 1
    chips = [
        f'<span class="chip"><span class="badge {_HARNESS_CLASS.get(h, "h-other")}">{_e(h)}'
        f"</span> <b>{n}</b> rows</span>"
        for h, n in sorted(counts.items())
    ]
    tasks = len(board.math_tasks) + len(board.general_tasks)
    chips.append(f'<span class="chip"><b>{tasks}</b> tasks</span>')
    what = ", ".join(_e(m) for m in models)
    return f'<p class="sub">{what}</p><div class="chips">{"".join(chips)}</div>'


def to_html(
    board: Leaderboard,
    regime_rows: list[dict] | None = None,
    plots: Mapping[str, bytes] | None = None,
    title: str = "Layer-pruning leaderboard",
) -> str:
    """The leaderboard page: summary, sortable table, regimes, plots (``{caption: PNG
    bytes}``) and notes; it needs nothing but itself to show."""
    from lmms_prune_plugin import __version__

    note_items = "".join(f"<li>{_e(n)}</li>" for n in notes(board))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
{_summary(board)}
<div class="tools"><input id="filter" type="search" placeholder="Filter rows (method, harness...)"
aria-label="filter rows"><span>Click a column header to sort; numbers sort numerically.</span></div>
{_board_table(board)}
{_regimes_table(regime_rows or [])}
{_figures(plots or {})}
<h2>Notes</h2><ul class="notes">{note_items}</ul>
<footer>Written by lmms-prune {_e(__version__)} (lmms-prune report).</footer>
</main><script>{_JS}</script></body></html>
"""

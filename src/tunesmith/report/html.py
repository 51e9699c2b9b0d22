"""The report page: one self-contained HTML document (inline CSS, plots as data URIs).

Each ``_section_*`` function turns one part of a :class:`~tunesmith.report.rundir.RunData`
into an HTML fragment, or ``""`` when there is nothing to show. Every value from the run
directory passes through :func:`html.escape`: generations are model output and can contain
anything, including markup.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from tunesmith.report.format import (
    fmt_bytes,
    fmt_delta,
    fmt_number,
    fmt_seconds,
    fmt_value,
    lower_is_better,
)
from tunesmith.report.plots import PLOTS, series
from tunesmith.report.rundir import RunData

MAX_SAMPLES = 5

CSS = """
:root { --fg:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc; --card:#fff;
  --accent:#2563eb; --good:#15803d; --bad:#b91c1c; --warn-bg:#fffbeb; --warn-line:#f59e0b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 24px 64px; }
header h1 { margin:0; font-size:26px; }
header .sub { color:var(--muted); margin-top:2px; }
h2 { font-size:18px; margin:0 0 12px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:18px 20px; margin-top:18px; }
.chips { display:flex; flex-wrap:wrap; gap:10px; margin-top:16px; }
.chip { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 12px; }
.chip .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.chip .v { font-weight:600; font-variant-numeric:tabular-nums; }
.missing { background:var(--warn-bg); border-color:var(--warn-line); }
.missing ul { margin:0; padding-left:20px; }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(460px,1fr)); gap:14px; }
.plots img { width:100%; height:auto; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:13px; background:var(--bg); }
td.num, th.num { text-align:right; white-space:nowrap; }
tr:last-child td { border-bottom:none; }
.better { color:var(--good); font-weight:600; }
.worse { color:var(--bad); font-weight:600; }
.same { color:var(--muted); }
.meta { color:var(--muted); margin:0 0 10px; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:13px; }
pre { margin:0; white-space:pre-wrap; word-break:break-word; background:var(--bg);
  border:1px solid var(--line); border-radius:6px; padding:8px 10px; max-height:16em; overflow:auto; }
.sample { border-top:1px solid var(--line); padding-top:12px; margin-top:12px; }
.sample:first-of-type { border-top:none; margin-top:0; padding-top:0; }
.sample .label { font-size:12px; color:var(--muted); text-transform:uppercase;
  letter-spacing:.04em; margin:6px 0 3px; }
.triple { display:grid; grid-template-columns:repeat(3,minmax(0,1fr)); gap:10px; }
.bar { background:var(--accent); height:8px; border-radius:4px; min-width:1px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:600; }
.badge.fits { background:#dcfce7; color:var(--good); }
.badge.tight { background:#fef3c7; color:#92400e; }
.badge.does-not-fit { background:#fee2e2; color:var(--bad); }
.kv td:first-child { width:32%; }
.breakdown td:last-child { width:40%; }
.kv td:first-child code { color:var(--fg); }
"""


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], num: set[int] = frozenset()
) -> str:
    """An HTML table; cells are pre-escaped HTML; columns in ``num`` align right."""

    def cls(i: int) -> str:
        return ' class="num"' if i in num else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(mapping: Mapping[str, Any]) -> str:
    rows = [
        (f"<code>{escape(str(k))}</code>", escape(fmt_value(str(k), v))) for k, v in mapping.items()
    ]
    return _table(["key", "value"], rows).replace("<table>", '<table class="kv">', 1)


def _section(title: str, body: str, extra_class: str = "") -> str:
    cls = f' class="{extra_class}"' if extra_class else ""
    return f"<section{cls}><h2>{escape(title)}</h2>{body}</section>"


def _chip(key: str, value: str) -> str:
    return f'<div class="chip"><div class="k">{escape(key)}</div><div class="v">{escape(value)}</div></div>'


def _last(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = series(rows, key)[1]
    return values[-1] if values else None


def _header(run: RunData) -> str:
    cfg = run.config or {}
    rows = run.metrics
    chips = [(k, str(cfg[k])) for k in ("model", "method", "target", "rank") if k in cfg]
    if steps := series(rows, "step")[1]:
        max_steps = cfg.get("max-steps") or cfg.get("max_steps")
        chips.append(("steps", f"{int(steps[-1])}" + (f" / {max_steps}" if max_steps else "")))
    if (loss := _last(rows, "loss")) is not None:
        chips.append(("final train loss", fmt_number(loss)))
    if eval_losses := series(rows, "eval_loss")[1]:
        chips.append(("best eval loss", fmt_number(min(eval_losses))))
    if (elapsed := _last(rows, "elapsed_s")) is not None:
        chips.append(("train time", fmt_seconds(elapsed)))
    if mem := series(rows, "peak_mem_bytes")[1]:
        chips.append(("peak memory", fmt_bytes(max(mem))))
    if tps := series(rows, "tokens_per_s")[1]:
        chips.append(("mean tokens/s", fmt_number(sum(tps) / len(tps))))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<header><h1>Run report: {escape(run.name)}</h1>"
        f'<div class="sub"><code>{escape(str(run.run_dir))}</code> · generated {now}</div>'
        f'<div class="chips">{"".join(_chip(k, v) for k, v in chips)}</div></header>'
    )


def _section_missing(run: RunData) -> str:
    if not run.missing:
        return ""
    items = "".join(f"<li><code>{escape(f)}</code> — {escape(why)}</li>" for f, why in run.missing)
    intro = '<p class="meta">This report shows what the run directory holds. Missing:</p>'
    return _section("Incomplete run", f"{intro}<ul>{items}</ul>", "missing")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _section_plots(plots: Mapping[str, bytes]) -> str:
    if not plots:
        return _section("Training curves", '<p class="meta">No metrics were logged.</p>')
    imgs = "".join(
        f'<img src="{_data_uri(png)}" alt="{escape(PLOTS[name][0])}" title="{name}.png">'
        for name, png in plots.items()
    )
    return _section("Training curves", f'<div class="plots">{imgs}</div>')


def _direction(name: str) -> str:
    """A muted arrow after a metric name: which way is an improvement."""
    lower = lower_is_better(name)
    title = "lower is better" if lower else "higher is better"
    return f'<span class="same" title="{title}">{"↓" if lower else "↑"}</span>'


def _section_eval(ev: Mapping[str, Any] | None) -> str:
    if ev is None:
        return ""
    metrics = ev.get("metrics") or {}
    base, adapted = metrics.get("base") or {}, metrics.get("adapted") or {}
    meta = ", ".join(
        f"{k}: <code>{escape(str(ev[k]))}</code>"
        for k in ("task", "n", "model", "adapter")
        if k in ev
    )

    rows = []
    for name in dict.fromkeys([*base, *adapted]):  # union, first-seen order
        b, a = base.get(name), adapted.get(name)
        delta, cls = fmt_delta(name, b, a)
        rows.append(
            (
                f"<code>{escape(name)}</code> {_direction(name)}",
                escape(fmt_value(name, b)),
                escape(fmt_value(name, a)),
                f'<span class="{cls}">{escape(delta)}</span>',
            )
        )
    table = _table(["metric", "base", "adapted", "Δ (adapted − base)"], rows, num={1, 2, 3})
    body = f'<p class="meta">{meta}</p>' + (table if rows else '<p class="meta">No metrics.</p>')
    return _section("Evaluation", body) + _section_samples(ev.get("samples") or [])


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return fmt_value("", v)


def _section_samples(samples: Sequence[Any]) -> str:
    samples = [s for s in samples if isinstance(s, Mapping)][:MAX_SAMPLES]
    if not samples:
        return ""
    parts = []
    for s in samples:
        cols = "".join(
            f'<div><div class="label">{k}</div><pre>{escape(_text(s.get(k)))}</pre></div>'
            for k in ("reference", "base", "adapted")
        )
        parts.append(
            f'<div class="sample"><div class="label">prompt</div><pre>{escape(_text(s.get("prompt")))}</pre>'
            f'<div class="triple">{cols}</div></div>'
        )
    return _section(f"Sample generations (first {len(samples)})", "".join(parts))


def _compare_rows(compare: Any) -> list[Mapping[str, Any]]:
    """The row list of ``compare.json``: the file itself, or its first list of objects."""
    candidates = [compare] if isinstance(compare, list) else []
    if isinstance(compare, Mapping):
        candidates += [compare.get(k) for k in ("rows", "results", "methods")]
        candidates += list(compare.values())
    for c in candidates:
        if isinstance(c, list) and c and all(isinstance(r, Mapping) for r in c):
            return c
    return []


def _section_compare(compare: Any, pngs: Mapping[str, bytes]) -> str:
    rows = _compare_rows(compare)
    if not rows and not pngs:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    numeric = {
        i for i, c in enumerate(cols) if any(isinstance(r.get(c), (int, float)) for r in rows)
    }
    table = _table(
        [escape(c) for c in cols],
        ([escape(fmt_value(c, r.get(c))) for c in cols] for r in rows),
        num=numeric,
    )
    imgs = "".join(f'<img src="{_data_uri(p)}" alt="{escape(n)}">' for n, p in pngs.items())
    return _section(
        "Method comparison", (table if rows else "") + f'<div class="plots">{imgs}</div>'
    )


def _section_plan(plan: Any) -> str:
    if not isinstance(plan, Mapping):
        return ""
    verdict = str(plan.get("verdict", "unknown"))
    total, budget = plan.get("total_bytes"), plan.get("budget_bytes")
    head = f'<p><span class="badge {escape(verdict)}">{escape(verdict)}</span>'
    if isinstance(total, (int, float)) and isinstance(budget, (int, float)):
        head += f" &nbsp;{fmt_bytes(total)} planned of a {fmt_bytes(budget)} budget"
    head += "</p>"
    body = head
    breakdown = plan.get("breakdown")
    if isinstance(breakdown, Mapping) and breakdown:
        values = [v for v in breakdown.values() if isinstance(v, (int, float))]
        top = max(values, default=0) or 1
        whole = sum(values) or 1
        rows = [
            (
                escape(str(k)),
                escape(fmt_bytes(v)) if isinstance(v, (int, float)) else escape(fmt_value(k, v)),
                f"{v / whole:.1%}" if isinstance(v, (int, float)) else "",
                f'<div class="bar" style="width:{max(0.0, v / top) * 100:.1f}%"></div>'
                if isinstance(v, (int, float)) and math.isfinite(v)
                else "",
            )
            for k, v in breakdown.items()
        ]
        body += (
            '<div class="breakdown">'
            + _table(["part", "bytes", "share", ""], rows, num={1, 2})
            + "</div>"
        )
    rest = {
        k: v
        for k, v in plan.items()
        if k not in ("verdict", "total_bytes", "budget_bytes", "breakdown")
    }
    if isinstance(rest.get("recommendation"), Mapping):
        body += '<h2 style="margin-top:14px">Recommended config</h2>' + _kv_table(
            rest.pop("recommendation")
        )
    if rest:
        body += '<div style="margin-top:12px">' + _kv_table(rest) + "</div>"
    return _section("Memory plan", body)


def _section_config(config: Mapping[str, Any] | None) -> str:
    if not config:
        return ""
    return _section("Resolved config (config.yaml)", _kv_table(config))


def _section_files(run: RunData) -> str:
    entries = sorted(p for p in run.run_dir.iterdir() if not p.name.startswith("."))
    rows = []
    for p in entries:
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            rows.append((f"<code>{escape(p.name)}/</code>", escape(fmt_bytes(size))))
        else:
            rows.append((f"<code>{escape(p.name)}</code>", escape(fmt_bytes(p.stat().st_size))))
    return _section("Files in the run directory", _table(["entry", "size"], rows, num={1}))


def render_html(
    run: RunData, plots: Mapping[str, bytes], compare_pngs: Mapping[str, bytes] | None = None
) -> str:
    """The full report page for ``run`` with the training-curve ``plots`` (name -> PNG)."""
    body = "".join(
        [
            _header(run),
            _section_missing(run),
            _section_plots(plots),
            _section_eval(run.eval if isinstance(run.eval, Mapping) else None),
            _section_compare(run.compare, compare_pngs or {}),
            _section_plan(run.plan),
            _section_config(run.config),
            _section_files(run),
        ]
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tunesmith · {escape(run.name)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )

"""A self-contained HTML report: inline CSS, plots embedded as base64 PNG, no network, no external files.

A tiny inline script counts the images the browser decoded and records the
count on ``<body data-images-loaded=N>``, so a headless-browser test (and a
reader's devtools) can see that every plot rendered.
"""

from __future__ import annotations

import base64
from html import escape

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1280px;
color:#1b1f24;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
.warn{background:#fff4e5;border-left:4px solid #d97706;padding:.6rem 1rem;margin:.8rem 0}
.noisy{background:#fff4e5}.failed{color:#b91c1c}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{color:#57606a;font-size:.85rem}
code{background:#f6f8fa;padding:0 .25rem}.scroll{overflow-x:auto}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var n = 0;
  document.querySelectorAll('img').forEach(function (img) { if (img.complete && img.naturalWidth > 0) n++; });
  document.body.setAttribute('data-images-loaded', String(n));
});
"""


def render_html(report: dict, figures: list[tuple[str, str, bytes]]) -> str:
    """The whole page for a combined report (see report.build_report) and its figures."""
    parts = [f"<h1>{escape(report['title'])}</h1>",
             f"<p>{len(report['runs'])} run(s); generated {escape(report['generated'])} by edgekit "
             f"{escape(report['edgekit_version'])}. Latencies in milliseconds; "
             f"CV above {report['cv_threshold']:.0%} marks a noisy run.</p>"]
    if report["warnings"]:
        items = "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
        parts.append(f'<div class="warn"><strong>Warnings</strong><ul>{items}</ul></div>')
    parts.append("<h2>Artifacts</h2>" + _table(report["columns"], report["table"], report["rows"]))
    for title, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><h3>{escape(title)}</h3><img alt=\"{escape(title)}\" "
                     f"src=\"data:image/png;base64,{data}\"><figcaption>{escape(caption)}</figcaption></figure>")
    for sweep in report["sweeps"]:
        parts.append(f"<h2>Sweep: {escape(sweep['name'])}</h2>"
                     + _table(sweep["columns"], sweep["table"], sweep["points"]))
    parts.append("<h2>Runs and environment</h2>")
    for run in report["runs"]:
        env = "".join(f"<li>{escape(line)}</li>" for line in run["environment_lines"])
        parts.append(f"<h3>{escape(run['title'])}</h3><p>Source: <code>{escape(run['source'])}</code></p>"
                     f"<ul>{env}</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(report['title'])}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _table(columns: list[str], cells: list[list[str]], rows: list[dict]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for values, row in zip(cells, rows):
        cls = "failed" if row.get("status") == "failed" else "noisy" if row.get("noisy") else ""
        tds = "".join(f"<td>{escape(v)}</td>" for v in values)
        body.append(f"<tr class=\"{cls}\">{tds}</tr>" if cls else f"<tr>{tds}</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"

"""Evaluation outputs: metrics.json, the paper-style metrics.md table, and a self-contained report.html.

The HTML embeds its images (base64 PNG thumbnails) and draws its charts as inline SVG, so it opens offline
and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from fashionsd_x.evaluate.names import METRICS, style_groups

GRID_ROWS = 12  # garments shown in the report's image grid
THUMB = 128  # thumbnail side in the report


def write_outputs(out: Path, result: dict[str, Any], rows: list[dict], generated: dict[str, list[Image.Image]]) -> None:
    """metrics.json, metrics.md and report.html in OUT."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(metrics_table(result), encoding="utf-8")
    (out / "report.html").write_text(report_html(result, rows, generated), encoding="utf-8")


def _columns(result: dict[str, Any]) -> list[str]:
    present = {metric for scores in result["variants"].values() for metric in scores}
    return [metric for metric in METRICS if metric in present or metric in result["unavailable"]]


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def metrics_table(result: dict[str, Any]) -> str:
    """Variants as rows, metrics as columns, arrows for the better direction (as in the paper's Table 1); then,
    for the sketch-style benchmark, the same table for each sketch style."""
    columns = _columns(result)
    lines = [f"# FashionSD-X evaluation ({result['num_items']} items of split {result['split']})", "",
             *_markdown_rows(result["variants"], columns)]
    for style, variants in result.get("by_style", {}).items():
        lines += ["", f"## Sketch style {style} ({result['num_items_by_style'][style]} items)", "",
                  *_markdown_rows(variants, columns)]
    if result["unavailable"]:
        lines += ["", "Unavailable metrics:"] + [f"- {m}: {reason}" for m, reason in result["unavailable"].items()]
    settings = result["settings"]
    lines += ["", f"Steps {settings['steps']}, seed {settings['seed']} (+ item index), guidance "
              f"{settings['guidance_scale']}, scheduler {settings['scheduler']}; base {result['model']}, "
              f"LoRA {result['lora']}, ControlNet {result['controlnet']}, CLIP {result['clip_model']}."]
    return "\n".join(lines) + "\n"


def _markdown_rows(variants: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    header = "| variant | " + " | ".join(f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    return lines + [f"| {variant} | " + " | ".join(_format(scores.get(m)) for m in columns) + " |"
                    for variant, scores in variants.items()]


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    thumb = image.convert("RGB").copy()
    if max(thumb.size) < THUMB:  # small models' images are scaled up (nearest: pixels stay visible as pixels)
        scale = THUMB / max(thumb.size)
        thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)), Image.Resampling.NEAREST)
    thumb.thumbnail((THUMB, THUMB))
    thumb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _chart(metric: str, result: dict[str, Any]) -> str:
    """One horizontal bar per variant, scaled to the largest value."""
    values = {v: s[metric] for v, s in result["variants"].items() if s.get(metric) is not None}
    if not values:
        return ""
    largest = max(abs(v) for v in values.values()) or 1.0
    bars = []
    for row, (variant, value) in enumerate(values.items()):
        width = 260 * abs(value) / largest
        y = 22 + row * 24
        bars.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(variant)}</text>'
                    f'<rect x="90" y="{y}" width="{width:.1f}" height="18" fill="#4a6fa5"/>'
                    f'<text x="{96 + width:.1f}" y="{y + 14}" font-size="12">{_format(value)}</text>')
    label, higher = METRICS[metric]
    height = 30 + 24 * len(values)
    return (f'<svg width="420" height="{height}" role="img"><text x="0" y="14" font-size="13" font-weight="bold">'
            f'{html.escape(label)} {"(higher is better)" if higher else "(lower is better)"}</text>{"".join(bars)}</svg>')


def _style_table(result: dict[str, Any], columns: list[str]) -> str:
    """The per-style scores as one table (style and variant as rows), or nothing for an ordinary dataset."""
    if not result.get("by_style"):
        return ""
    head = "<tr><th>sketch style</th><th>variant</th>" + "".join(
        f"<th>{html.escape(METRICS[m][0])}</th>" for m in columns) + "</tr>"
    body = ""
    for style, variants in result["by_style"].items():
        for variant, scores in variants.items():
            cells = [f"{style} ({result['num_items_by_style'][style]})", variant]
            body += ("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
                     + "".join(f"<td>{_format(scores.get(m))}</td>" for m in columns) + "</tr>")
    return f"<h3>By sketch style</h3><table>{head}{body}</table>"


def _grid_rows(rows: list[dict]) -> list[int]:
    """Indices of the garments in the image grid: the first GRID_ROWS, or with sketch styles, turn by turn from
    each style so that every style is shown."""
    groups = style_groups(rows)
    if not groups:
        return list(range(min(GRID_ROWS, len(rows))))
    turns = [group[turn] for turn in range(max(map(len, groups.values()))) for group in groups.values()
             if turn < len(group)]
    return turns[:GRID_ROWS]


def report_html(result: dict[str, Any], rows: list[dict], generated: dict[str, list[Image.Image]]) -> str:
    """The report page: metrics table, one chart per metric, and a grid sketch | truth | each variant."""
    columns = _columns(result)
    table = "<tr><th>variant</th>" + "".join(f"<th>{html.escape(METRICS[m][0])} {'↑' if METRICS[m][1] else '↓'}</th>"
                                              for m in columns) + "</tr>"
    for variant, scores in result["variants"].items():
        table += f"<tr><td>{html.escape(variant)}</td>" + "".join(
            f"<td>{_format(scores.get(m))}</td>" for m in columns) + "</tr>"
    charts = "".join(_chart(metric, result) for metric in columns)
    styles = _style_table(result, columns)
    head = "<tr><th>sketch</th><th>ground truth</th>" + "".join(f"<th>{html.escape(v)}</th>" for v in generated) + "<th>text</th></tr>"
    grid = ""
    for index in _grid_rows(rows):
        row = rows[index]
        cells = [row["sketch"], row["image"]] + [images[index] for images in generated.values()]
        grid += "<tr>" + "".join(f'<td><img src="{_data_uri(c)}" alt=""></td>' for c in cells)
        grid += f"<td>{html.escape(row['text'])}</td></tr>"
    missing = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(r)}</li>" for m, r in result["unavailable"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FashionSD-X evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:center}} img{{display:block}} .charts svg{{margin:0 2em 1em 0}}</style></head>
<body><h1>FashionSD-X evaluation</h1>
<p>{result['num_items']} items of split <code>{html.escape(result['split'])}</code> of <code>{html.escape(result['data'])}</code>;
base <code>{html.escape(str(result['model']))}</code>, LoRA <code>{html.escape(str(result['lora']))}</code>,
ControlNet <code>{html.escape(str(result['controlnet']))}</code>.</p>
<h2>Metrics</h2><table>{table}</table>{'<h3>Unavailable</h3><ul>' + missing + '</ul>' if missing else ''}{styles}
<h2>Charts</h2><div class="charts">{charts}</div>
<h2>Samples</h2><table>{head}{grid}</table>
</body></html>
"""

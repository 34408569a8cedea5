"""Evaluation outputs: metrics.json, the paper-style metrics.md table, and a self-contained report.html.

The HTML embeds its images (base64 PNG thumbnails) and draws its bar charts as inline SVG, so it opens offline
and can be mailed as one file. A sweep's trade-off chart is drawn with matplotlib into OUT/sweep.png and
embedded in the page the same way.
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
from fashionsd_x.evaluate.sweep import label as combination_label
from fashionsd_x.files import atomic_path, write_text

GRID_ROWS = 12  # garments shown in the report's image grid
THUMB = 128  # thumbnail side in the report
SWEEP_CHART = "sweep.png"  # the sweep's trade-off chart, in OUT
AXIS_LABELS = {"attribute_accuracy": "Colour & pattern acc. (mean)"}  # the trade-off's axes that are no METRICS


def write_outputs(out: Path, result: dict[str, Any], rows: list[dict], generated: dict[str, list[Image.Image]]) -> None:
    """metrics.json, metrics.md, report.html and, for a sweep with a trade-off, sweep.png in OUT."""
    out.mkdir(parents=True, exist_ok=True)
    trade = result.get("sweep", {}).get("trade_off")
    (out / SWEEP_CHART).unlink(missing_ok=True)  # an earlier sweep's chart must not pass for this run's
    chart = None
    if trade:
        data = write_sweep_chart(trade, out / SWEEP_CHART).read_bytes()
        chart = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "metrics.md", metrics_table(result))
    write_text(out / "report.html", report_html(result, rows, generated, chart))


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
    if "sweep" in result:
        lines += ["", *_sweep_markdown(result["sweep"], columns)]
    if result["unavailable"]:
        lines += ["", "Unavailable metrics:"] + [f"- {m}: {reason}" for m, reason in result["unavailable"].items()]
    settings = result["settings"]
    lines += ["", f"Steps {settings['steps']}, seed {settings['seed']} (+ item index), guidance "
              f"{settings['guidance_scale']}, ControlNet scale {settings['controlnet_scale']} from "
              f"{settings.get('control_start', 0.0):g} to {settings.get('control_end', 1.0):g} of the denoising, "
              f"LoRA scale {settings.get('lora_scale', 1.0)}, scheduler {settings['scheduler']}; base "
              f"{result['model']}, LoRA {result['lora']}, ControlNet {result['controlnet']}, "
              f"CLIP {result['clip_model']}."]
    return "\n".join(lines) + "\n"


def _markdown_rows(variants: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    header = "| variant | " + " | ".join(f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    return lines + [f"| {variant} | " + " | ".join(_format(scores.get(m)) for m in columns) + " |"
                    for variant, scores in variants.items()]


def _sweep_rows(sweep: dict[str, Any], columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """The sweep as a table (header, rows): a row per combination and swept variant; the evaluation's own setting
    and the fashionsd-x points on the Pareto front marked in the last column."""
    names = list(sweep["values"])
    trade = sweep.get("trade_off")
    front = {trade["labels"][i] for i in trade["front"]} if trade else set()
    header = [*names, "variant", *(f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in columns), "note"]
    rows = []
    for entry in sweep["combinations"]:
        for variant, scores in entry["metrics"].items():
            on_front = variant == "fashionsd-x" and combination_label(entry["settings"]) in front
            notes = [note for note, flag in (("default", entry["default"]), ("Pareto front", on_front)) if flag]
            rows.append([*(f"{entry['settings'][n]:g}" for n in names), variant,
                         *(_format(scores.get(m)) for m in columns), ", ".join(notes)])
    return header, rows


def _sweep_note(sweep: dict[str, Any]) -> str:
    trade = sweep.get("trade_off")
    if not trade:
        return ("No trade-off chart: it needs a sketch metric (silhouette IoU or edge F1) and a text metric (CLIP "
                "score, or colour and pattern accuracy) for every combination.")
    return (f"Trade-off of {trade['variant']} ({SWEEP_CHART}): {_axis(trade['x'])} (follows the sketch) against "
            f"{_axis(trade['y'])} (follows the text); up and to the right is better, the line joins the settings no "
            "other beats on both, the star is the evaluation's own setting.")


def _sweep_markdown(sweep: dict[str, Any], columns: list[str]) -> list[str]:
    header, rows = _sweep_rows(sweep, columns)
    return [f"## Sweep ({len(sweep['combinations'])} combinations)", "", "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header), *("| " + " | ".join(row) + " |" for row in rows), "", _sweep_note(sweep)]


def _axis(metric: str) -> str:
    return AXIS_LABELS.get(metric) or METRICS[metric][0]


def write_sweep_chart(trade: dict[str, Any], path: Path) -> Path:
    """The sketch-vs-text trade-off: every combination a point with its label, the Pareto front as a line
    through the combinations no other beats on both axes, the evaluation's own setting as a star."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    points, front, default = trade["points"], trade["front"], trade["default"]
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axis = figure.subplots()
    others = [i for i in range(len(points)) if i not in front]
    axis.scatter([points[i][0] for i in others], [points[i][1] for i in others], color="#9a9aa3", label="dominated")
    axis.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", color="#4a6fa5",
              label="Pareto front")
    if default is not None:
        axis.scatter([points[default][0]], [points[default][1]], marker="*", s=260, color="#e0a458",
                     edgecolor="black", zorder=3, label="default")
    names, labels = _short_labels(trade["labels"])
    for group in _label_groups(points):
        anchor = max(group, key=lambda i: (points[i][1], points[i][0]))  # the group's top point
        text = "\n".join(f"{labels[i]} ({points[i][0]:.2f}, {points[i][1]:.2f})" if len(group) > 1 else labels[i]
                         for i in group)
        axis.annotate(text, points[anchor], textcoords="offset points", xytext=(5, 3), fontsize=7, color="#333",
                      va="bottom")
    axis.margins(0.15)  # room for the labels of the outermost points
    axis.text(0.01, 0.01, f"points: {names}", transform=axis.transAxes, fontsize=7, color="#555")
    axis.set_xlabel(f"{_axis(trade['x'])}: follows the sketch →")
    axis.set_ylabel(f"{_axis(trade['y'])}: follows the text →")
    axis.set_title(f"{trade['variant']}: sketch vs text adherence", fontsize=11)
    axis.legend(loc="best", fontsize=8)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    return path


def _short_labels(labels: list[str]) -> tuple[str, list[str]]:
    """("controlnet_scale, control_end", ["0.5, 1", ...]): the setting names once, each point by its values, so
    labels of neighbouring points stay short enough not to run into each other."""
    pairs = [[part.split("=", 1) for part in text.split(", ")] for text in labels]
    names = ", ".join(name for name, _ in pairs[0]) if pairs else ""
    return names, [", ".join(value for _, value in pair) for pair in pairs]


def _label_groups(points: list[list[float]], near: tuple[float, float] = (0.15, 0.06)) -> list[list[int]]:
    """Points whose labels would run into each other (within NEAR of the axes' spans, x and y: a label is wide
    and one line high; joined transitively), each group in point order; the chart writes one stacked label per
    group."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(points):
        touching = [g for g in groups if any(abs(x - points[j][0]) / span_x < near[0]
                                             and abs(y - points[j][1]) / span_y < near[1] for j in g)]
        merged = sorted({j for g in touching for j in g} | {i})
        groups = [g for g in groups if g not in touching] + [merged]
    return sorted(groups)


def _sweep_html(result: dict[str, Any], columns: list[str], chart: str | None) -> str:
    """The report's sweep section: the trade-off chart (CHART, a data URI) when drawn, its note and the table."""
    if "sweep" not in result:
        return ""
    header, rows = _sweep_rows(result["sweep"], columns)
    table = "<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    figure = f'<p><img src="{chart}" alt="sketch vs text trade-off of the sweep"></p>' if chart else ""
    return f"<h2>Sweep</h2>{figure}<p>{html.escape(_sweep_note(result['sweep']))}</p><table>{table}</table>"


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


def report_html(result: dict[str, Any], rows: list[dict], generated: dict[str, list[Image.Image]],
                sweep_chart: str | None = None) -> str:
    """The report page: metrics table, one chart per metric, the sweep (its trade-off chart SWEEP_CHART as a data
    URI, and its table), and a grid sketch | truth | each variant (of the evaluation's own settings)."""
    columns = _columns(result)
    table = "<tr><th>variant</th>" + "".join(f"<th>{html.escape(METRICS[m][0])} {'↑' if METRICS[m][1] else '↓'}</th>"
                                              for m in columns) + "</tr>"
    for variant, scores in result["variants"].items():
        table += f"<tr><td>{html.escape(variant)}</td>" + "".join(
            f"<td>{_format(scores.get(m))}</td>" for m in columns) + "</tr>"
    charts = "".join(_chart(metric, result) for metric in columns)
    styles = _style_table(result, columns)
    sweep = _sweep_html(result, columns, sweep_chart)
    generated = {variant: images for variant, images in generated.items() if variant in result["variants"]}
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
<h2>Charts</h2><div class="charts">{charts}</div>{sweep}
<h2>Samples</h2><table>{head}{grid}</table>
</body></html>
"""

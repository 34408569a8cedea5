"""`fsdx study analyze`: the answers of a study -> win rates, intervals, tests, agreement, a table and charts.

Answers are turned from sides into variants first (left/right -> the first or second variant of the pair, as the
rater's queue placed them), so every number below speaks of variants, never of sides. Which automatic sketch
metric agrees with the raters' sketch answers is metric_agreement.py's part.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fashionsd_x.apps.study import db as store  # `db` is analyze_study's parameter (the CLI's DB)
from fashionsd_x.apps.study import metric_agreement
from fashionsd_x.apps.study.stats import WinRate, holm, krippendorff_alpha, observed_agreement, win_rate
from fashionsd_x.files import atomic_path, write_text

AGREEMENT_METHOD = ("Krippendorff's alpha, nominal (first variant better / second better / can't tell), over the "
                    "comparisons answered by at least two raters")
CHOICE_LABELS = {"a": "first variant better", "b": "second variant better", "tie": "can't tell"}


@dataclass
class Analysis:
    """What `analyze_study` found and wrote."""

    out: Path
    rows: list[dict[str, Any]]  # per criterion and pair: counts, win rate, interval, p-values
    agreement: dict[str, dict[str, Any]]  # criterion -> alpha, observed agreement, the comparisons and answers used
    position: dict[str, Any]  # how often the left garment was chosen
    raters: dict[str, int]
    files: list[Path]
    metric_agreement: dict[str, Any] = field(default_factory=dict)  # which sketch metric agrees with the raters


def analyze_study(db: Path, out: Path = Path("outputs/study_analysis")) -> Analysis:
    """Win rates, 95% intervals, exact tests and rater agreement of a user study's answers, and which automatic
    sketch metric agrees with the raters.

    Per criterion and pair of variants: wins, losses and can't-tell answers; the win rate over decisive answers
    with its Wilson 95% interval; a two-sided exact binomial test against 0.5, also Holm-adjusted over all rows;
    Krippendorff's alpha per criterion. For the sketch question: each automatic sketch metric (sketch MSE, edge
    precision/recall/F1, Chamfer distance, silhouette IoU, SSIM) scores the judged images, and its agreement with
    the raters' majority (bootstrap 95% interval) and Kendall's tau-b with the vote margin name the metric that
    agrees best. Writes OUT/results.md, OUT/results.json, OUT/win_rates.png, OUT/votes.png and, with sketch
    answers, OUT/metric_agreement.png. Can run while the study is still being served.

    Args:
        db: study file written by `fsdx study create` and answered through `fsdx study serve`.
        out: output folder for the table, the JSON and the charts.
    """
    # 1. Read the answers, in variant terms.
    study, out = Path(db), Path(out)
    with closing(store.open_study(study)) as connection:
        meta, criteria = store.read_meta(connection), store.criteria(connection)
        pairs = store.pairs(connection)
        answers = [dict(row, outcome=outcome(row)) for row in store.answers(connection)]
        if not answers:
            raise store.StudyError(f"{study} has no answers yet; serve it to raters with `fsdx study serve {study}`")
        # 2. The automatic metrics against the sketch answers (they score the images stored in the study).
        metrics = metric_agreement.analyze_metric_agreement(connection, meta, criteria, answers)
    # 3. Statistics.
    rows = win_rate_rows(answers, criteria, pairs)
    agreement = {criterion: agreement_of(answers, criterion) for criterion in criteria}
    analysis = Analysis(out, rows, agreement, position_bias(answers), rater_counts(answers, meta, len(criteria)), [],
                        metrics)
    # 4. Outputs.
    out.mkdir(parents=True, exist_ok=True)
    analysis.files = [_write_json(analysis, meta, study, criteria), _write_markdown(analysis, meta, study),
                      *write_charts(rows, list(criteria), out)]
    if "skipped" not in metrics:
        analysis.files.append(metric_agreement.write_chart(metrics, out))
    return analysis


def outcome(answer: dict[str, Any]) -> str:
    """"a" if the first variant of the pair was chosen, "b" the second, "tie" for can't tell."""
    if answer["choice"] == "tie":
        return "tie"
    chose_left = answer["choice"] == "left"
    return "a" if chose_left == bool(answer["a_left"]) else "b"


def win_rate_rows(answers: list[dict[str, Any]], criteria: dict[str, str],
                  pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per criterion and pair (in the study's order), with Holm-adjusted p-values over all rows."""
    counts: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    for answer in answers:
        counts[(answer["criterion"], answer["variant_a"], answer["variant_b"])][answer["outcome"]] += 1
    rows = []
    for criterion in criteria:
        for variant_a, variant_b in pairs:
            tally = counts[(criterion, variant_a, variant_b)]
            result: WinRate = win_rate(tally["a"], tally["b"], tally["tie"])
            rows.append({"criterion": criterion, "variant_a": variant_a, "variant_b": variant_b, **asdict(result),
                         "decisive": result.decisive})
    for row, adjusted in zip(rows, holm([row["p_value"] for row in rows])):
        row["p_holm"] = adjusted
    return rows


def agreement_of(answers: list[dict[str, Any]], criterion: str) -> dict[str, Any]:
    """Krippendorff's alpha of one criterion over the comparisons that at least two raters answered."""
    by_comparison: dict[int, list[str]] = defaultdict(list)
    for answer in answers:
        if answer["criterion"] == criterion:
            by_comparison[answer["comparison"]].append(answer["outcome"])
    shared = [labels for labels in by_comparison.values() if len(labels) >= 2]
    return {"alpha": krippendorff_alpha(shared), "observed": observed_agreement(shared), "comparisons": len(shared),
            "answers": sum(len(labels) for labels in shared)}


def position_bias(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the left garment won among decisive answers; far from 0.5 means raters favoured a side."""
    sides = Counter(answer["choice"] for answer in answers)
    result = win_rate(sides["left"], sides["right"], sides["tie"])
    return {"left": sides["left"], "right": sides["right"], "tie": sides["tie"], "left_rate": result.rate,
            "p_value": result.p_value}


def rater_counts(answers: list[dict[str, Any]], meta: dict[str, Any], num_criteria: int) -> dict[str, int]:
    per_rater = Counter(answer["rater"] for answer in answers)
    complete = sum(count >= meta["per_rater"] * num_criteria for count in per_rater.values())
    return {"raters": len(per_rater), "complete": complete, "answers": len(answers)}


def _write_json(analysis: Analysis, meta: dict[str, Any], study: Path, criteria: dict[str, str]) -> Path:
    path = analysis.out / "results.json"
    payload = {"study": str(study), "design": {key: meta.get(key) for key in
                                               ("variants", "num_comparisons", "per_rater", "seed", "evaluation")},
               "criteria": criteria, "raters": analysis.raters, "win_rates": analysis.rows,
               "agreement": {"method": AGREEMENT_METHOD, "labels": CHOICE_LABELS, **analysis.agreement},
               "position": analysis.position,
               "metric_agreement": {"method": metric_agreement.METHOD, **analysis.metric_agreement},
               "notes": "win rate = first variant's wins / decisive answers (can't tell excluded, counted); "
                        "95% Wilson interval; p: two-sided exact binomial test against 0.5 (scipy.stats.binomtest); "
                        "p_holm: Holm-adjusted over all rows"}
    write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def _write_markdown(analysis: Analysis, meta: dict[str, Any], study: Path) -> Path:
    path = analysis.out / "results.md"
    write_text(path, results_markdown(analysis, meta, study))
    return path


def results_markdown(analysis: Analysis, meta: dict[str, Any], study: Path) -> str:
    """The report: win-rate table, agreement table, the side check, and which sketch metric agrees with people."""
    raters = analysis.raters
    title = f"# User study: {raters['answers']} answers from {raters['raters']} raters ({raters['complete']} complete)"
    lines = [title,
             "", f"Study {study}: {meta['num_comparisons']} comparisons, {meta['per_rater']} per rater; "
             f"variants {', '.join(meta['variants'])}.", "", "## Win rates", "",
             "Win rate: wins of the first variant over decisive answers (can't tell excluded from the rate, counted "
             "in its column); 95% Wilson interval; p: two-sided exact binomial test against 0.5; p (Holm): adjusted "
             "over every row of this table.", "",
             "| criterion | comparison | wins | losses | can't tell | win rate | 95% CI | p | p (Holm) |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in analysis.rows:
        interval = "n/a" if row["rate"] is None else f"{row['ci_low']:.1%} – {row['ci_high']:.1%}"
        lines.append(f"| {row['criterion']} | {row['variant_a']} vs {row['variant_b']} | {row['wins_a']} | "
                     f"{row['wins_b']} | {row['ties']} | {_percent(row['rate'])} | {interval} | "
                     f"{_p(row['p_value'])} | {_p(row['p_holm'])} |")
    lines += ["", "## Agreement between raters", "", AGREEMENT_METHOD + "; observed: share of those answers that the "
              "comparison's other raters matched. Alpha is n/a without such comparisons or when every answer was the "
              "same (no variation: alpha is undefined).", "",
              "| criterion | alpha | observed | comparisons | answers |", "| --- | ---: | ---: | ---: | ---: |"]
    for criterion, found in analysis.agreement.items():
        alpha = "n/a" if found["alpha"] is None else f"{found['alpha']:.3f}"
        lines.append(f"| {criterion} | {alpha} | {_percent(found['observed'])} | {found['comparisons']} | "
                     f"{found['answers']} |")
    position = analysis.position
    lines += ["", "## Sides", "", f"The left garment was chosen in {position['left']} of "
              f"{position['left'] + position['right']} decisive answers ({_percent(position['left_rate'])}, "
              f"p = {_p(position['p_value'])}); sides were randomised and balanced, so this measures a preference "
              "for a side, not for a variant."]
    lines += metric_agreement.markdown(analysis.metric_agreement)
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def write_charts(rows: list[dict[str, Any]], criteria: list[str], out: Path) -> list[Path]:
    """win_rates.png (rate and interval per pair, a panel per criterion) and votes.png (wins, ties, losses)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    paths = [out / "win_rates.png", out / "votes.png"]
    for path, draw in zip(paths, (_draw_win_rates, _draw_votes)):
        figure = Figure(figsize=(4.2 * len(criteria), 0.6 * len(rows) / len(criteria) + 1.6), layout="constrained")
        axes = figure.subplots(1, len(criteria), sharey=True, squeeze=False)[0]
        for axis, criterion in zip(axes, criteria):
            draw(axis, [row for row in rows if row["criterion"] == criterion])
            axis.set_title(criterion)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            figure.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format="png")
    return paths


def _label(row: dict[str, Any]) -> str:
    return f"{row['variant_a']}\nvs {row['variant_b']}"


def _draw_win_rates(axis: Any, rows: list[dict[str, Any]]) -> None:
    decided = [(index, row) for index, row in enumerate(rows) if row["rate"] is not None]  # others get no bar
    rates = [row["rate"] for _, row in decided]
    errors = [[row["rate"] - row["ci_low"] for _, row in decided], [row["ci_high"] - row["rate"] for _, row in decided]]
    axis.barh([index for index, _ in decided], rates, xerr=errors, color="#7a3e9d", alpha=0.8, capsize=4)
    axis.axvline(0.5, color="#444", linestyle="--", linewidth=1)
    for index, row in enumerate(rows):
        if row["rate"] is None:
            axis.text(0.5, index, "  no decisive answers", va="center", color="#666", fontsize=9)
    axis.set_xlim(0, 1)
    axis.set_yticks(range(len(rows)), [_label(row) for row in rows])
    axis.invert_yaxis()
    axis.set_xlabel("win rate of the first variant (95% CI)")


def _draw_votes(axis: Any, rows: list[dict[str, Any]]) -> None:
    positions = list(range(len(rows)))
    wins = [row["wins_a"] for row in rows]
    ties = [row["ties"] for row in rows]
    axis.barh(positions, wins, color="#7a3e9d", label="first wins")
    axis.barh(positions, ties, left=wins, color="#c9c9cf", label="can't tell")
    axis.barh(positions, [row["wins_b"] for row in rows], left=[w + t for w, t in zip(wins, ties)], color="#e0a458",
              label="second wins")
    axis.set_yticks(positions, [_label(row) for row in rows])
    axis.invert_yaxis()
    axis.set_xlabel("answers")


def show(result: Analysis) -> int:
    """Print the results table and where the files are."""
    print((result.out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(path) for path in result.files))
    return 0

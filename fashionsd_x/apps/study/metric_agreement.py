"""Which automatic sketch metric agrees with people: the paper's open question 1, answered on a study's pairs.

Raters answered "Which garment follows the sketch better?" for pairs of images made from one sketch. Every
automatic sketch metric scores the same two images against the same sketch, from the study file's own copies
(the images raters saw, the sketch they were shown), so the answer needs nothing but the study file; only SSIM,
which compares with the ground-truth photo, also needs the evaluated dataset. Per metric:
    agreement   over the comparisons with a decisive majority (more votes for one image than the other;
                can't-tell answers are left out of the majority): the share where the metric prefers the
                majority's image, a metric tie counting half; a percentile bootstrap 95% interval, resampling
                comparisons (paired: the same draws for every metric).
    tau-b       Kendall's tau-b between the metric's difference (oriented so that positive favours the first
                variant) and the vote margin (first minus second, over all of the comparison's answers), over
                every answered comparison.
The best metric is the one with the highest agreement (then tau-b). The answer is marked uncertain when fewer
than MIN_DECISIVE_PAIRS comparisons were decisive (a percentile interval is too narrow on few pairs: it
collapses to a point when the metric agrees on every one), when the paired bootstrap interval of the best
metric's lead over the runner-up includes 0, or when the best metric's own interval includes 0.5 (chance).
"""

from __future__ import annotations

import io
import sqlite3
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from fashionsd_x.apps.study import db as store
from fashionsd_x.apps.study.stats import bootstrap_means, kendall_tau_b, percentile_interval
from fashionsd_x.evaluate import names
from fashionsd_x.files import atomic_path

CRITERION = "sketch"  # the question whose answers the metrics are held against
MIN_DECISIVE_PAIRS = 30  # below this, one metric's 95% interval alone spans about 30 points of agreement
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0  # fixed: the same answers give the same intervals on every run
CHART = "metric_agreement.png"


# metric (as fsdx evaluate names it) -> what it measures; the order of the table when metrics tie
METRICS = {
    "sketch_mse": "the paper's: MSE between the image's extracted sketch and the input sketch",
    "edge_precision": "share of the image's lines within 2 px of an input line",
    "edge_recall": "share of the input's lines within 2 px of an image line",
    "edge_f1": "harmonic mean of edge precision and recall",
    "chamfer": "symmetric mean line-to-line distance, as a fraction of the image diagonal",
    "silhouette_iou": "IoU of the garment region and the region inside the sketch's outline",
    "ssim": "SSIM against the ground-truth photo (needs the evaluated dataset)",
}
# metric -> higher is better; Chamfer is the one here that fsdx evaluate's table (names.METRICS) does not report
HIGHER_IS_BETTER = {name: better for name, (_, better) in names.METRICS.items()} | {"chamfer": False}


@dataclass(frozen=True)
class PairVotes:
    """The sketch answers of one comparison, in variant terms."""

    comparison: int  # comparison id in the study
    item: int  # item id: the sketch and prompt both images were made from
    variant_a: str
    variant_b: str
    wins_a: int
    wins_b: int
    ties: int  # can't tell

    @property
    def majority(self) -> str | None:
        """"a" or "b" when one image got more votes than the other; None for a tie of votes (or none)."""
        if self.wins_a == self.wins_b:
            return None
        return "a" if self.wins_a > self.wins_b else "b"

    @property
    def margin(self) -> float:
        """(wins of a - wins of b) / answers, in [-1, 1]: can't-tell answers pull it towards 0."""
        return (self.wins_a - self.wins_b) / (self.wins_a + self.wins_b + self.ties)


def analyze_metric_agreement(connection: sqlite3.Connection, meta: dict[str, Any], criteria: dict[str, str],
                             answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The metric-agreement section of the analysis (see the module docstring); {"skipped": why} without
    sketch answers. ANSWERS carry their outcome ("a", "b" or "tie") as analyze.outcome gives it."""
    if CRITERION not in criteria:
        return {"skipped": f"the study did not ask the {CRITERION} question; create it with --criteria "
                           f"including {CRITERION} to compare the metrics with people"}
    pairs = judged_pairs(answers)
    if not pairs:
        return {"skipped": f"no answers to the {CRITERION} question yet"}
    scores, unavailable = score_outputs(connection, meta, {pair.item for pair in pairs})
    metrics = [name for name in METRICS if name not in unavailable]
    values = [{name: (scores[(pair.item, pair.variant_a)][name], scores[(pair.item, pair.variant_b)][name])
               for name in metrics} for pair in pairs]
    found = agreement(pairs, {name: [oriented_difference(name, *value[name]) for value in values] for name in metrics})
    for row in found["metrics"]:
        row["higher_is_better"] = HIGHER_IS_BETTER[row["metric"]]
    found.update(question=criteria[CRITERION], unavailable=unavailable,
                 comparisons=[{**asdict(pair), "scores": value} for pair, value in zip(pairs, values)])
    return found


def judged_pairs(answers: list[dict[str, Any]]) -> list[PairVotes]:
    """One PairVotes per comparison with at least one sketch answer, in comparison order."""
    tallies: dict[int, Counter[str]] = defaultdict(Counter)
    shown: dict[int, dict[str, Any]] = {}  # comparison -> one of its answers, for the item and the variants
    for answer in answers:
        if answer["criterion"] == CRITERION:
            tallies[answer["comparison"]][answer["outcome"]] += 1
            shown[answer["comparison"]] = answer
    return [PairVotes(comparison, shown[comparison]["item"], shown[comparison]["variant_a"],
                      shown[comparison]["variant_b"], tally["a"], tally["b"], tally["tie"])
            for comparison, tally in sorted(tallies.items())]


def oriented_difference(metric: str, value_a: float, value_b: float) -> float:
    """value_a - value_b, negated for a lower-is-better metric: positive always means the metric prefers a."""
    return value_a - value_b if HIGHER_IS_BETTER[metric] else value_b - value_a


def agreement(pairs: Sequence[PairVotes], differences: dict[str, Sequence[float]],
              draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Agreement, its bootstrap interval and Kendall's tau-b of each metric, ranked, and the verdict.

    DIFFERENCES: metric -> one oriented difference per pair (positive: the metric prefers variant a).
    """
    decisive = [index for index, pair in enumerate(pairs) if pair.majority is not None]
    counts = {"answered": len(pairs), "decisive": len(decisive), "tied_votes": len(pairs) - len(decisive)}
    columns = list(differences)
    # hit per decisive pair and metric: 1 when the metric prefers the majority's image, 0.5 for a metric tie
    hits = [[_hit(differences[name][index], pairs[index].majority) for name in columns] for index in decisive]
    rows = [_metric_row(name, differences[name], pairs, [row[column] for row in hits])
            for column, name in enumerate(columns)]
    resampled = bootstrap_means(hits, draws, seed) if decisive and columns else []
    for column, row in enumerate(rows):
        if resampled:
            row["ci_low"], row["ci_high"] = percentile_interval([draw[column] for draw in resampled])
    rows.sort(key=_rank)
    return {"pairs": counts, "metrics": rows, **_verdict(rows, columns, resampled, len(decisive))}


def _hit(difference: float, majority: str | None) -> float:
    if difference == 0:
        return 0.5  # the metric cannot tell the two images apart: as good as a coin
    return 1.0 if (difference > 0) == (majority == "a") else 0.0


def _metric_row(name: str, differences: Sequence[float], pairs: Sequence[PairVotes],
                hits: list[float]) -> dict[str, Any]:
    tau, p_value = kendall_tau_b(list(differences), [pair.margin for pair in pairs])
    return {"metric": name, "agreement": sum(hits) / len(hits) if hits else None, "ci_low": None, "ci_high": None,
            "agrees": sum(hit == 1.0 for hit in hits), "disagrees": sum(hit == 0.0 for hit in hits),
            "metric_ties": sum(hit == 0.5 for hit in hits), "kendall_tau_b": tau, "tau_p_value": p_value}


def _rank(row: dict[str, Any]) -> tuple[float, float]:
    """Highest agreement first, then highest tau-b; sort is stable, so exact ties keep METRICS' order."""
    missing = float("inf")
    return (-row["agreement"] if row["agreement"] is not None else missing,
            -row["kendall_tau_b"] if row["kendall_tau_b"] is not None else missing)


def _verdict(rows: list[dict[str, Any]], columns: list[str], resampled: list[list[float]],
             decisive: int) -> dict[str, Any]:
    """The best metric, its lead over the runner-up with a paired bootstrap interval, and why it is uncertain."""
    if not resampled:
        why = "no metric could be computed" if not columns else "no comparison has a decisive majority yet"
        return {"best": None, "runner_up": None, "lead_ci": None, "uncertain": [why]}
    best, runner_up = rows[0], rows[1] if len(rows) > 1 else None
    reasons = []
    if decisive < MIN_DECISIVE_PAIRS:
        reasons.append(f"only {decisive} comparisons had a decisive majority (fewer than {MIN_DECISIVE_PAIRS})")
    lead = None
    if runner_up is not None:
        first, second = columns.index(best["metric"]), columns.index(runner_up["metric"])
        lead = percentile_interval([draw[first] - draw[second] for draw in resampled])
        if lead[0] <= 0:
            reasons.append(f"its lead over {runner_up['metric']} is within the noise (95% interval of the "
                           f"difference {lead[0]:+.1%} to {lead[1]:+.1%} includes 0)")
    if best["ci_low"] <= 0.5:
        reasons.append("its own agreement is not distinguishable from chance (its 95% interval includes 50%)")
    return {"best": best["metric"], "runner_up": None if runner_up is None else runner_up["metric"],
            "lead_ci": None if lead is None else list(lead), "uncertain": reasons}


# ---------------------------------------------------------------------------------------------- scoring


def score_outputs(connection: sqlite3.Connection, meta: dict[str, Any],
                  items: set[int]) -> tuple[dict[tuple[int, str], dict[str, float]], dict[str, str]]:
    """(item, variant) -> metric -> value for every output of ITEMS, from the study file's images and sketches;
    and metric -> why it could not be computed (SSIM without the evaluated dataset)."""
    from PIL import Image

    rows = connection.execute(
        "SELECT i.id AS item, i.garment, i.sketch, o.variant, o.image FROM items i JOIN outputs o ON o.item = i.id "
        "ORDER BY i.id, o.variant").fetchall()  # db.py has no reader of these ids; the schema is db.SCHEMA
    wanted = [row for row in rows if row["item"] in items]
    if any(row["sketch"] is None for row in wanted):
        raise store.StudyError("the study file holds no input sketch for some judged garment; it was not made by "
                               "`fsdx study create` with the sketch criterion")
    truth, unavailable = ground_truth(meta, {row["garment"] for row in wanted})
    scores = {}
    for row in wanted:
        image, sketch = (Image.open(io.BytesIO(store.image_png(connection, row[key]))) for key in ("image", "sketch"))
        scores[(row["item"], row["variant"])] = image_scores(image, sketch, truth.get(row["garment"]))
    return scores, unavailable


def image_scores(image: Any, sketch: Any, ground_truth: Any = None) -> dict[str, float]:
    """Every metric of METRICS for one generated IMAGE and the input SKETCH it was made from, as fsdx evaluate
    computes them (one extractor with the default SketchConfig; the sketch in the image's square frame);
    ssim only with the GROUND_TRUTH photo, at its size."""
    from fashionsd_x.data.sketch import SketchConfig, extract_sketch
    from fashionsd_x.evaluate import metrics as M

    image = image.convert("RGB")
    config, framed = SketchConfig(), M.square_frame(sketch, image.width)
    extracted = extract_sketch(image.resize(framed.size), config)
    prf = M.edge_prf(extracted, framed)
    scores = {"sketch_mse": M.sketch_mse(image, framed, config), "edge_precision": prf["precision"],
              "edge_recall": prf["recall"], "edge_f1": prf["f1"], "chamfer": M.chamfer_distance(extracted, framed),
              "silhouette_iou": M.silhouette_iou(image, framed)}
    if ground_truth is not None:
        truth = ground_truth.convert("RGB")
        scores["ssim"] = M.ssim(image.resize(truth.size) if image.size != truth.size else image, truth)
    return scores


def ground_truth(meta: dict[str, Any], garments: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """garment -> its ground-truth photo from the evaluated dataset split, if that folder is still there; else
    ({}, {"ssim": why}). The study file does not hold the photos: raters never see them."""
    data, split = meta.get("data"), meta.get("split") or "test"
    reason = (f"SSIM compares with the ground-truth photos, which are not in the study file and were not found "
              f"in the evaluated dataset {data!r} split {split!r}")
    if not data or not (Path(data) / "dataset_dict.json").is_file():
        return {}, {"ssim": reason}
    from datasets import load_from_disk

    dataset = load_from_disk(data)
    rows = dataset[split].select_columns(["id", "image"]) if split in dataset else []
    found = {names.image_stem(row["id"]): row["image"] for row in rows if names.image_stem(row["id"]) in garments}
    return (found, {}) if found.keys() == garments else ({}, {"ssim": reason})


# ---------------------------------------------------------------------------------------------- outputs


METHOD = (f"Agreement: share of the comparisons with a decisive majority (more votes for one image; can't tell "
          f"left out) where the metric prefers the majority's image, a metric tie counting half; 95% interval: "
          f"percentile bootstrap over comparisons ({BOOTSTRAP_DRAWS} draws, seed {BOOTSTRAP_SEED}, the same draws "
          f"for every metric). Kendall's tau-b: between the metric's difference (oriented so that positive favours "
          f"the first variant) and the vote margin ((first - second) / answers), over every answered comparison. "
          f"Ranked by agreement, then tau-b. Uncertain when fewer than {MIN_DECISIVE_PAIRS} comparisons are "
          f"decisive, when the paired bootstrap interval of the best metric's lead over the runner-up includes 0, "
          f"or when the best metric's interval includes 50%.")


def summary(found: dict[str, Any]) -> str:
    """One paragraph: which metric agrees best, and whether that is settled."""
    if "skipped" in found:
        return f"Not computed: {found['skipped']}."
    if found["best"] is None:
        return "No metric can be named yet: " + "; ".join(found["uncertain"]) + "."
    best = found["metrics"][0]
    text = (f"Best agreement: **{best['metric']}** ({best['agreement']:.1%}, 95% CI {best['ci_low']:.1%} – "
            f"{best['ci_high']:.1%}, over {found['pairs']['decisive']} decisive comparisons).")
    if found["uncertain"]:
        return text + " Uncertain: " + "; ".join(found["uncertain"]) + "; more raters or comparisons would settle it."
    low, high = found["lead_ci"]
    return text + f" It leads {found['runner_up']} by {low:+.1%} to {high:+.1%} (95% interval)."


def markdown(found: dict[str, Any]) -> list[str]:
    """The results.md section: method, table, verdict."""
    lines = ["", "## Which metric agrees with the raters", ""]
    if "skipped" in found:
        return lines + [summary(found)]
    pairs = found["pairs"]
    lines += [f"Question: \"{found['question']}\". {pairs['answered']} comparisons answered, {pairs['decisive']} "
              f"with a decisive majority, {pairs['tied_votes']} tied. " + METHOD, "",
              "| metric | better | agreement | 95% CI | agrees / disagrees / ties | Kendall tau-b | p (tau) |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for row in found["metrics"]:
        interval = "n/a" if row["ci_low"] is None else f"{row['ci_low']:.1%} – {row['ci_high']:.1%}"
        agreement_text = "n/a" if row["agreement"] is None else f"{row['agreement']:.1%}"
        tau = "n/a" if row["kendall_tau_b"] is None else f"{row['kendall_tau_b']:+.3f}"
        p_value = "n/a" if row["tau_p_value"] is None else (
            "< 0.001" if row["tau_p_value"] < 0.001 else f"{row['tau_p_value']:.3f}")
        lines.append(f"| {row['metric']} | {'higher' if row['higher_is_better'] else 'lower'} | {agreement_text} | "
                     f"{interval} | {row['agrees']} / {row['disagrees']} / {row['metric_ties']} | {tau} | {p_value} |")
    lines += ["", "Metrics: " + "; ".join(f"{name}: {meaning}" for name, meaning in METRICS.items()) + ".",
              "", summary(found)]
    lines += [f"\nNot compared: {metric} ({why})." for metric, why in found["unavailable"].items()]
    return lines


def write_chart(found: dict[str, Any], out: Path) -> Path:
    """metric_agreement.png: agreement with its interval per metric, and Kendall's tau-b, best first."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    rows = found["metrics"]
    figure = Figure(figsize=(9, 0.45 * len(rows) + 1.6), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(rows)))
    colors = ["#7a3e9d" if index == 0 else "#b9a3c7" for index in positions]  # the best metric stands out
    rates = [row["agreement"] or 0.0 for row in rows]
    errors = [[rate - (row["ci_low"] if row["ci_low"] is not None else rate) for rate, row in zip(rates, rows)],
              [(row["ci_high"] if row["ci_high"] is not None else rate) - rate for rate, row in zip(rates, rows)]]
    left.barh(positions, rates, xerr=errors, color=colors, capsize=4)
    left.axvline(0.5, color="#444", linestyle="--", linewidth=1)
    left.set_xlim(0, 1)
    left.set_xlabel("agreement with the raters' majority (95% CI)")
    left.set_yticks(positions, [row["metric"] for row in rows])
    left.invert_yaxis()
    right.barh(positions, [row["kendall_tau_b"] or 0.0 for row in rows], color=colors)
    right.axvline(0, color="#444", linewidth=1)
    right.set_xlim(-1, 1)
    right.set_xlabel("Kendall's tau-b with the vote margin")
    figure.suptitle(f"Which metric agrees with the raters ({found['pairs']['decisive']} decisive comparisons)")
    path = out / CHART
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    return path

"""`fsdx study analyze`: the statistics against hand-computed values, and a scripted study end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from fashionsd_x.apps.study import db
from fashionsd_x.apps.study.analyze import analyze_study, outcome
from fashionsd_x.apps.study.create import create_study
from fashionsd_x.apps.study.stats import holm, krippendorff_alpha, observed_agreement, win_rate
from tests.apps.test_study_create import make_evaluation

PREFERENCE = ("fashionsd-x", "lora", "vanilla")  # the scripted raters' taste for realism, best first


def test_win_rate_interval_and_test_by_hand():
    result = win_rate(8, 2, ties=3)
    assert (result.rate, result.decisive, result.ties) == (0.8, 10, 3)
    # Wilson: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with p = 0.8, n = 10, z = 1.96
    assert result.ci_low == pytest.approx(0.49016, abs=1e-5)
    assert result.ci_high == pytest.approx(0.94332, abs=1e-5)
    # two-sided exact test: 2 · P(X >= 8 | n = 10, p = 1/2) = 2 · (45 + 10 + 1) / 1024
    assert result.p_value == pytest.approx(112 / 1024)
    assert win_rate(0, 0, ties=4).rate is None and win_rate(0, 0, ties=4).p_value is None
    assert win_rate(5, 5).p_value == pytest.approx(1.0)


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], nan_ok=False)


def test_krippendorff_alpha_on_krippendorffs_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 4 observers, 12 units,
    # missing values; the published alpha is 0.743.
    observers = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .",
                 "1 2 3 3 2 4 4 1 2 5 1 ."]
    units = [[value for value in unit if value != "."] for unit in zip(*(line.split() for line in observers))]
    assert krippendorff_alpha(units) == pytest.approx(0.7434, abs=1e-4)
    assert krippendorff_alpha([["a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "b"], ["b", "a"]]) < 0  # systematic disagreement is worse than chance
    assert krippendorff_alpha([["a", "a"], ["a"]]) is None  # one label throughout: undefined
    assert observed_agreement([["a", "a", "b"], ["a", "b"], ["c"]]) == pytest.approx((2 * 1 / 2) / (3 + 2))


def test_sides_become_variants():
    assert outcome({"choice": "left", "a_left": 1}) == "a"
    assert outcome({"choice": "left", "a_left": 0}) == "b"
    assert outcome({"choice": "right", "a_left": 0}) == "a"
    assert outcome({"choice": "tie", "a_left": 1}) == "tie"


def scripted_choice(criterion: str, left_variant: str, right_variant: str) -> str:
    """Realism: the better variant of PREFERENCE; sketch: the worse; text: can't tell."""
    if criterion == "text":
        return "tie"
    left_better = PREFERENCE.index(left_variant) < PREFERENCE.index(right_variant)
    return "left" if left_better == (criterion == "realism") else "right"


@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study of the fake evaluation, answered by 5 scripted raters (4 of 9+ comparisons each)."""
    folder = tmp_path_factory.mktemp("analyze")
    study = create_study(make_evaluation(folder), folder / "study.db", per_rater=4).out
    with closing(db.open_study(study)) as connection:
        for code in ("r0", "r1", "r2", "r3", "r4"):
            rater = db.rater_id(connection, code)
            for comparison, a_left, variant_a, variant_b in connection.execute(
                    "SELECT s.comparison, s.a_left, c.variant_a, c.variant_b FROM assignments s "
                    "JOIN comparisons c ON c.id = s.comparison WHERE s.rater = ?", (rater,)).fetchall():
                left, right = (variant_a, variant_b) if a_left else (variant_b, variant_a)
                for criterion in ("realism", "sketch", "text"):
                    db.record_answer(connection, rater, comparison, criterion, scripted_choice(criterion, left, right))
    return study


def test_scripted_study_end_to_end(answered: Path, tmp_path: Path):
    analysis = analyze_study(answered, tmp_path / "out")
    with closing(db.open_study(answered)) as connection:
        per_pair = dict(connection.execute(
            "SELECT c.variant_a || ' vs ' || c.variant_b, COUNT(*) FROM assignments s "
            "JOIN comparisons c ON c.id = s.comparison GROUP BY c.variant_a, c.variant_b").fetchall())
        shared = connection.execute("SELECT COUNT(*) FROM (SELECT comparison FROM assignments GROUP BY comparison "
                                    "HAVING COUNT(*) >= 2)").fetchone()[0]
    for row in analysis.rows:
        shown = per_pair[f"{row['variant_a']} vs {row['variant_b']}"]
        if row["criterion"] == "text":  # every answer can't tell: counted, no rate, no test
            assert (row["ties"], row["decisive"], row["rate"], row["p_value"]) == (shown, 0, None, None)
        else:  # the first variant is always the later, better one: it wins every realism and loses every sketch
            expected = (shown, 0) if row["criterion"] == "realism" else (0, shown)
            assert (row["wins_a"], row["wins_b"]) == expected
            assert row["p_value"] == pytest.approx(min(1.0, 2 * 0.5 ** shown))
    assert analysis.agreement["realism"]["comparisons"] == shared
    assert analysis.agreement["text"]["alpha"] is None  # everyone answered can't tell: no variation
    assert analysis.agreement["realism"]["observed"] == pytest.approx(1.0)
    assert analysis.raters == {"raters": 5, "complete": 5, "answers": 60}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["win_rates"] == json.loads(json.dumps(analysis.rows))
    assert "Krippendorff" in saved["agreement"]["method"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| realism | fashionsd-x vs lora |" in table and "100.0%" in table
    for chart in ("win_rates.png", "votes.png"):
        with Image.open(tmp_path / "out" / chart) as image:
            assert image.format == "PNG" and image.width > 800


def test_cli_analyze_as_a_user(answered: Path, tmp_path: Path):
    command = [sys.executable, "-m", "fashionsd_x", "study", "analyze", str(answered), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| sketch | fashionsd-x vs vanilla |" in result.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == \
        ["results.json", "results.md", "votes.png", "win_rates.png"]
    empty = create_study(answered.parent / "evaluation", tmp_path / "empty.db", criteria="realism").out
    result = subprocess.run([*command[:5], str(empty)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "no answers yet" in result.stderr

"""`fsdx study create`: the balanced design, and a study file built from a fake evaluation folder."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fashionsd_x.apps.study import db
from fashionsd_x.apps.study.create import create_study
from fashionsd_x.apps.study.design import Design

VARIANTS = ("vanilla", "lora", "fashionsd-x")


def make_evaluation(folder: Path, garments: int = 10, size: int = 64, variants: tuple[str, ...] = VARIANTS) -> Path:
    """An `fsdx evaluate`-style folder without a model: fashionsd-x's image is the garment itself, lora's the
    garment mirrored and blurred, vanilla's another garment; PNGs carry parameters as generation writes them."""
    from datasets import load_from_disk

    from fashionsd_x.data.build import build_dataset
    from fashionsd_x.data.synth import synthesize
    from fashionsd_x.generate import Generated, GenerationParams

    raw = synthesize(folder / "raw", num=garments, seed=5, size=size)
    data = build_dataset("folder", raw, folder / "dataset", resolution=size, test_fraction=0.5).out
    rows = load_from_disk(str(data))["test"]
    evaluation = folder / "evaluation"
    for index, row in enumerate(rows):
        images = {"vanilla": rows[(index + 1) % len(rows)]["image"], "fashionsd-x": row["image"],
                  "lora": row["image"].transpose(Image.Transpose.FLIP_LEFT_RIGHT).filter(ImageFilter.GaussianBlur(1))}
        for variant in variants:
            params = GenerationParams(prompt=row["text"], seed=index,
                                      lora=None if variant == "vanilla" else "runs/lora",
                                      controlnet="runs/cn" if variant == "fashionsd-x" else None)
            Generated(images[variant], params).save(evaluation / "images" / variant / f"{row['id']}.png")
    (evaluation / "metrics.json").write_text(json.dumps({"split": "test", "data": str(data), "num_items": len(rows)}))
    return evaluation


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_evaluation(tmp_path_factory.mktemp("eval"))


def _queues(design: Design, raters: int) -> list[list]:
    return [design.queue(rater) for rater in range(raters)]


def test_every_rater_sees_every_comparison_once_and_sides_alternate():
    design = Design(num_comparisons=12, per_rater=12, seed=4)
    queues = _queues(design, raters=6)
    for queue in queues:
        assert sorted(slot.comparison for slot in queue) == list(range(12))  # a permutation
        assert sum(slot.first_left for slot in queue) == 6  # half of each rater's pairs have variant_a left
    left = Counter(slot.comparison for queue in queues for slot in queue if slot.first_left)
    assert all(left[comparison] == 3 for comparison in range(12))  # each pair: half the raters see A left
    assert len({tuple(slot.comparison for slot in queue) for queue in queues}) == 6  # six different orders


def test_partial_queues_cover_comparisons_evenly():
    design = Design(num_comparisons=10, per_rater=4, seed=1)
    queues = _queues(design, raters=7)  # 28 slots over 10 comparisons: each given 2 or 3 times
    seen = Counter(slot.comparison for queue in queues for slot in queue)
    assert set(seen.values()) == {2, 3} and sum(seen.values()) == 28
    for queue in queues:
        assert len({slot.comparison for slot in queue}) == 4
    for comparison in range(10):
        sides = [slot.first_left for queue in queues for slot in queue if slot.comparison == comparison]
        assert abs(2 * sum(sides) - len(sides)) <= 1  # left and right differ by at most one


def test_design_is_a_function_of_its_seed():
    assert _queues(Design(9, 5, seed=2), 4) == _queues(Design(9, 5, seed=2), 4)
    assert _queues(Design(9, 5, seed=2), 4) != _queues(Design(9, 5, seed=3), 4)
    with pytest.raises(ValueError, match="per_rater"):
        Design(9, 10)


def test_study_file_holds_everything_it_shows(evaluation: Path, tmp_path: Path):
    result = create_study(evaluation, tmp_path / "study.db", per_rater=4)
    garments = sorted(png.stem for png in (evaluation / "images" / "lora").glob("*.png"))
    assert (result.items, result.comparisons, result.per_rater) == (len(garments), 3 * len(garments), 4)
    assert result.pairs == [("lora", "vanilla"), ("fashionsd-x", "vanilla"), ("fashionsd-x", "lora")]
    connection = sqlite3.connect(tmp_path / "study.db")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [row[0] for row in connection.execute("SELECT garment FROM items ORDER BY id")] == garments
    for garment, variant, png in connection.execute(
            "SELECT i.garment, o.variant, g.png FROM outputs o JOIN items i ON i.id = o.item "
            "JOIN images g ON g.id = o.image"):
        stored = Image.open(io.BytesIO(png))
        assert not stored.text  # the generation parameters (LoRA, ControlNet) would unblind the study
        with Image.open(evaluation / "images" / variant / f"{garment}.png") as original:
            assert np.array_equal(pixels(stored), pixels(original))
    from datasets import load_from_disk

    sketches = {row["id"]: row["sketch"] for row in load_from_disk(str(evaluation.parent / "dataset"))["test"]}
    stored = dict(connection.execute("SELECT i.garment, g.png FROM items i JOIN images g ON g.id = i.sketch"))
    assert stored.keys() == set(garments)
    for garment, png in stored.items():
        assert np.array_equal(pixels(Image.open(io.BytesIO(png))), pixels(sketches[garment]))


def test_same_seed_same_study(evaluation: Path, tmp_path: Path):
    dumps = []
    for name in ("one.db", "two.db"):
        create_study(evaluation, tmp_path / name, per_rater=5, seed=7)
        with sqlite3.connect(tmp_path / name) as connection:
            dumps.append([connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                          for table in ("images", "items", "outputs", "comparisons")])
    assert dumps[0] == dumps[1]


def test_rater_codes_map_to_stable_queues(evaluation: Path, tmp_path: Path):
    create_study(evaluation, tmp_path / "study.db", per_rater=5, seed=3)
    connection = db.open_study(tmp_path / "study.db")
    first = db.rater_id(connection, "ann")
    assert db.rater_id(connection, "bob") != first
    assert db.rater_id(connection, "ann") == first  # a second visit finds the same rater, no new queue
    queue = connection.execute("SELECT comparison, a_left FROM assignments WHERE rater = ? ORDER BY position",
                               (first,)).fetchall()
    expected = [(slot.comparison + 1, int(slot.first_left)) for slot in db.design(connection).queue(0)]
    assert [tuple(row) for row in queue] == expected


def test_errors_are_one_line(evaluation: Path, tmp_path: Path):
    (tmp_path / "taken.db").write_text("answers")
    with pytest.raises(ValueError, match="already exists"):
        create_study(evaluation, tmp_path / "taken.db")
    with pytest.raises(ValueError, match="--criteria"):
        create_study(evaluation, tmp_path / "a.db", criteria="realism,beauty")
    with pytest.raises(ValueError, match="--per-rater"):
        create_study(evaluation, tmp_path / "a.db", per_rater=0)
    with pytest.raises(FileNotFoundError):
        create_study(tmp_path / "missing", tmp_path / "a.db")
    assert not (tmp_path / "a.db").exists()


def test_a_lone_variant_or_a_lost_dataset_is_refused(tmp_path: Path, evaluation: Path):
    single = tmp_path / "single"
    shutil.copytree(evaluation, single)
    for variant in ("lora", "fashionsd-x"):
        shutil.rmtree(single / "images" / variant)
    with pytest.raises(ValueError, match="at least two"):
        create_study(single, tmp_path / "a.db")
    lost = tmp_path / "lost"
    shutil.copytree(evaluation, lost)
    (lost / "metrics.json").write_text(json.dumps({"split": "test", "data": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="sketch criterion"):
        create_study(lost, tmp_path / "a.db")
    result = create_study(lost, tmp_path / "a.db", criteria="realism,text")  # no sketch asked: no sketch needed
    assert result.criteria == ["realism", "text"]


def test_a_metrics_file_of_the_wrong_shape_is_one_line(tmp_path: Path, evaluation: Path):
    """metrics.json's data and split name where the sketches are: a number or a list there was a TypeError deep in
    the build (Path(5), `["test"] in dataset`), not a message."""
    copy = tmp_path / "copy"
    shutil.copytree(evaluation, copy)
    for text, fragment in (("[]", "JSON list"), ("not json", "is not JSON"), ('{"data": 5}', "data must be text"),
                           ('{"data": true}', "data must be text"), ('{"split": ["test"]}', "split must be text"),
                           ('{"split": 1}', "split must be text"), ('{"n": ' + "9" * 5000 + "}", "is not JSON")):
        (copy / "metrics.json").write_text(text)
        with pytest.raises(db.StudyError, match=fragment) as refused:
            create_study(copy, tmp_path / "a.db")
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 300
    for per_rater in (True, 2.0, "2"):  # true is 1 and 2.0 == 2 in Python: refused, as the server refuses them
        with pytest.raises(db.StudyError, match="--per-rater"):
            create_study(evaluation, tmp_path / "a.db", per_rater=per_rater)
    assert not (tmp_path / "a.db").exists()

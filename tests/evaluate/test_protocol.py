"""`fsdx evaluate` end to end on a small synthetic dataset with a tiny base, LoRA and ControlNet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image, ImageFilter

from fashionsd_x import limits
from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.images import pad_to_square
from fashionsd_x.data.sketch_styles import STYLES, draw_item, make_sketch_styles
from fashionsd_x.data.synth import PALETTE, synthesize
from fashionsd_x.evaluate.metrics import fid_kid_from_features, line_mask, mask_iou, square_frame
from fashionsd_x.evaluate.names import METRICS, style_groups
from fashionsd_x.evaluate.protocol import EvaluationError, ItemScores, evaluate
from fashionsd_x.models.tiny import build_tiny_base
from tests.test_cli import run_main
from tests.test_generate import _save_controlnet, _save_lora

# Tiny models: one thread is faster than two, and far faster while other work holds the second core.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    base = build_tiny_base(root / "base")
    raw = synthesize(root / "raw", num=16, seed=2, size=64)
    build_dataset("folder", raw, root / "data", resolution=32, test_fraction=0.4)
    return {"root": root, "base": base, "data": root / "data", "lora": _save_lora(base, root / "lora", 1),
            "controlnet": _save_controlnet(base, root / "cn")}


def test_evaluate_command_writes_all_outputs(setup, tmp_path):
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "fashionsd_x", "evaluate", "--data", str(setup["data"]), "--model",
               str(setup["base"]), "--lora", str(setup["lora"]), "--controlnet", str(setup["controlnet"]),
               "--out", str(out), "--steps", "2", "--limit", "3", "--clip-model", str(tmp_path / "no-clip")]
    # One thread: a tiny model runs faster on one, and far faster while other work holds the second core.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["variants"]) == ["vanilla", "lora", "fashionsd-x"]
    for scores in metrics["variants"].values():
        for name in ("ssim", "sketch_mse", "edge_precision", "edge_recall", "edge_f1", "silhouette_iou",
                     "color_accuracy"):
            assert 0.0 <= scores[name] <= 1.0, name
    # no network and no local weights: FID/KID and CLIP score are reported unavailable with the reason
    assert {"fid", "kid_mean", "clip_score"} <= set(metrics["unavailable"])
    assert "--clip-model" in metrics["unavailable"]["clip_score"]
    assert metrics["num_items"] == 3 and metrics["settings"]["steps"] == 2 and "diffusers" in metrics["versions"]
    table = (out / "metrics.md").read_text()
    assert "| fashionsd-x |" in table and "SSIM ↑" in table and "Sketch MSE ↓" in table
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 * 5 and "<svg" in page
    assert len(list((out / "images" / "fashionsd-x").glob("*.png"))) == 3
    # Two processes (accelerate launch, CPU) split the items and give the same images and figures as one.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", "29523", "-m", *command[1:]]
    split = launch[:launch.index("--out") + 1] + [str(tmp_path / "two")] + launch[launch.index("--out") + 2:]
    result = subprocess.run(split, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for variant, scores in metrics["variants"].items():
        assert two["variants"][variant] == pytest.approx(scores, abs=1e-6), variant
    for image in (out / "images").rglob("*.png"):
        other = tmp_path / "two" / image.relative_to(out)
        assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(other))), image.name


def test_images_are_reused_only_when_everything_that_made_them_is_the_same(setup, tmp_path):
    lora = _save_lora(setup["base"], tmp_path / "lora", 1)
    kwargs = dict(data=setup["data"], model=str(setup["base"]), out=tmp_path / "e", lora=lora,
                  variants="lora", limit=2, steps=2, clip_model=str(tmp_path / "none"))
    first = evaluate(**kwargs).metrics
    image = next((tmp_path / "e" / "images" / "lora").glob("*.png"))
    stamp, pixels = image.stat().st_mtime_ns, np.asarray(Image.open(image))
    evaluate(**kwargs)
    assert image.stat().st_mtime_ns == stamp
    # The LoRA retrained in place (same folder, same settings, other weights): its images are made again.
    _save_lora(setup["base"], lora, 7)
    second = evaluate(**kwargs).metrics
    assert image.stat().st_mtime_ns != stamp and not np.array_equal(np.asarray(Image.open(image)), pixels)
    assert second["weights_sha256"]["lora"] != first["weights_sha256"]["lora"]
    recorded = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert recorded["weights_sha256"] == second["weights_sha256"] and len(recorded["weights_sha256"]["base"]) == 64
    assert len(recorded["data_sha256"]) == 64 and recorded["settings"]["steps"] == 2 and recorded["command"]
    stamp = image.stat().st_mtime_ns
    evaluate(**{**kwargs, "steps": 3})  # other settings: made again
    assert image.stat().st_mtime_ns != stamp
    stamp = image.stat().st_mtime_ns
    image.with_suffix(".key").unlink()  # an image whose key is lost (an interrupted write) is not trusted
    evaluate(**{**kwargs, "steps": 3})
    assert image.stat().st_mtime_ns != stamp


def test_a_resolution_the_base_cannot_generate_is_an_error_that_says_what_to_pass(setup, tmp_path):
    with pytest.raises(EvaluationError, match="pass --resolution"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", variants="vanilla", limit=1, steps=1,
                 resolution=36, clip_model=str(tmp_path / "none"))


def test_items_whose_images_cannot_all_be_held_are_refused_before_any_model_loads(setup, tmp_path, capsys,
                                                                                 monkeypatch):
    # Every row and every generated image stay in memory until scored: per 32 px item 4 kB of row (RGB image, L
    # sketch) + (1 generated set + 2 scoring copies) x 3 kB = 13,312 bytes; 30 kB hold two.
    monkeypatch.setattr(limits, "available_memory", lambda: 30_000)
    items = load_from_disk(str(setup["data"]))["test"].num_rows
    assert items >= 3
    common = ["evaluate", "--data", setup["data"], "--model", setup["base"], "--variants", "vanilla", "--out",
              tmp_path / "out"]
    held = (f"{items} items and 1 generated set(s) of 32 px images, held until scored, need "
            f"{limits.format_bytes(items * 13_312)}; this machine has 30 kB available")
    code, error = run_main(capsys, *common)
    assert (code, error) == (2, f"fsdx evaluate: error: the 'test' split's {items} items (no --limit): at most 2 items "
                                f"({held})\n")
    code, error = run_main(capsys, *common, "--limit", items)
    assert (code, error) == (2, f"fsdx evaluate: error: --limit {items}: at most 2 items ({held})\n")
    assert not (tmp_path / "out").exists()


def test_metric_columns_are_known():
    assert {"fid", "kid_mean", "clip_score", "ssim", "sketch_mse"} <= set(METRICS)


def test_bad_evaluation_input(setup, tmp_path):
    with pytest.raises(EvaluationError, match="need --lora"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", variants="lora")
    with pytest.raises(EvaluationError, match="needs --controlnet"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", lora=setup["lora"])
    with pytest.raises(EvaluationError, match="unknown variant"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", variants="dalle")
    with pytest.raises(EvaluationError, match="no 'validation' split"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", variants="vanilla", split="validation")
    with pytest.raises(EvaluationError, match="not a dataset"):
        evaluate(tmp_path, str(setup["base"]), tmp_path / "o", variants="vanilla")


def test_every_metric_per_sketch_style_on_the_benchmark(setup, tmp_path):
    data = make_sketch_styles(setup["root"] / "styles", per_style=2, seed=0, resolution=32)
    result = evaluate(data, str(setup["base"]), tmp_path / "styles", lora=setup["lora"],
                      controlnet=setup["controlnet"], steps=2, clip_model=str(tmp_path / "no-clip"))
    metrics = json.loads((tmp_path / "styles" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert list(metrics["by_style"]) == list(STYLES)
    assert metrics["num_items_by_style"] == {style: 2 for style in STYLES} and metrics["num_items"] == 2 * len(STYLES)
    for style, variants in metrics["by_style"].items():
        assert list(variants) == ["vanilla", "lora", "fashionsd-x"], style
        for scores in variants.values():
            assert -1.0 <= scores["ssim"] <= 1.0, style
            for name in ("sketch_mse", "edge_f1", "silhouette_iou", "color_accuracy", "pattern_accuracy"):
                assert 0.0 <= scores[name] <= 1.0, (style, name)
    # Styles are equal parts of the split, so the overall mean is the mean of the style means.
    for variant, scores in metrics["variants"].items():
        for name in ("ssim", "edge_f1", "silhouette_iou", "color_accuracy"):
            by_style = [metrics["by_style"][style][variant][name] for style in STYLES]
            assert scores[name] == pytest.approx(float(np.mean(by_style))), (variant, name)
    table = (tmp_path / "styles" / "metrics.md").read_text()
    for style in STYLES:
        assert f"## Sketch style {style} (2 items)" in table
    assert table.count("| fashionsd-x |") == 1 + len(STYLES)
    page = (tmp_path / "styles" / "report.html").read_text()
    assert "By sketch style" in page and all(style in page for style in STYLES)


def _garment_image(silhouette: Image.Image, side: int, shift: int = 0) -> Image.Image:
    """A perfect generated garment: the silhouette in a colour on white, in the square frame, moved SHIFT px."""
    mask = np.asarray(silhouette) > 127
    fill = np.where(mask[..., None], np.array(PALETTE["green"], np.uint8), np.uint8(255)).astype(np.uint8)
    square = np.asarray(pad_to_square(Image.fromarray(fill, "RGB"), side))
    return Image.fromarray(np.roll(square, shift, axis=1))


def test_mask_iou_of_the_silhouette_itself_is_one_and_of_a_shifted_one_much_lower():
    silhouette = Image.fromarray(draw_item(0, "off_centre", 0).silhouette)  # a portrait or landscape sheet
    assert silhouette.width != silhouette.height
    # Not exactly 1: garment_mask also counts the anti-aliased edge pixels (a half-pixel ring; trousers are thin).
    assert mask_iou(_garment_image(silhouette, 128), silhouette) > 0.9
    assert mask_iou(_garment_image(silhouette, 128, shift=24), silhouette) < 0.6
    assert mask_iou(Image.new("RGB", (64, 64), "white"), Image.new("L", (50, 80), 0)) == 1.0


@pytest.mark.parametrize("style", ["fine_line", "pencil_scan", "off_centre"])
def test_sketches_are_brought_to_the_generated_frame_with_their_lines(style):
    item = draw_item(0, style, 0)  # a 900-2048 px sheet with 2-6 px black, or grey pencil, lines
    framed = square_frame(Image.fromarray(item.sketch), 128)
    assert framed.size == (128, 128)
    edge = np.asarray(square_frame(Image.fromarray(item.silhouette), 128, fill=0, mask=True)) > 127
    edge &= ~np.asarray(Image.fromarray(edge).filter(ImageFilter.MinFilter(3)))
    lines = line_mask(framed)
    near_edge = np.asarray(Image.fromarray(edge).filter(ImageFilter.MaxFilter(5)))
    near_line = np.asarray(Image.fromarray(lines).filter(ImageFilter.MaxFilter(3)))
    # The outline survives a 7-16x shrink (a grey pencil line too), in place on the silhouette's edge.
    assert near_line[edge].mean() > 0.9 and near_edge[lines].mean() > 0.8


def test_thumbnails_are_enlarged_and_own_sketches_kept_as_they_are():
    small = Image.fromarray(draw_item(0, "small_lowres", 0).sketch)
    assert line_mask(square_frame(small, 128)).any()
    same = Image.fromarray(np.full((32, 32), 255, np.uint8))
    assert square_frame(same, 32) is same  # a dataset's own sketch is compared as it is


def test_a_part_of_the_split_is_scored_from_its_own_items():
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(5, 16, generator=generator), torch.randn(5, 16, generator=generator) + 1
    scores = ItemScores(5, {"lora": {"ssim": [0.1, 0.2, 0.3, 0.4, 0.5]}}, real, {"lora": fake}, {})
    part = scores.table([1, 3, 4])["lora"]
    assert part["ssim"] == pytest.approx((0.2 + 0.4 + 0.5) / 3)
    assert part["fid"] == pytest.approx(fid_kid_from_features(real[[1, 3, 4]], fake[[1, 3, 4]])["fid"])
    assert part["fid"] != pytest.approx(scores.table()["lora"]["fid"])
    assert set(scores.table([2])["lora"]) == {"ssim"}  # one item: no FID or KID, not an error
    rows = [{"style": style} for style in ("pencil", "fine", "pencil")]
    assert style_groups(rows) == {"pencil": [0, 2], "fine": [1]} and style_groups([{"id": "a"}]) == {}


def _stamps(folder: Path) -> dict[str, int]:
    """Every image under FOLDER (relative path -> modification time), to see which were made again."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*.png"))
            if path.name != "sweep.png"}


def test_a_sweep_evaluates_every_combination_in_its_own_folder_and_reuses_by_key(setup, tmp_path):
    out = tmp_path / "sweep"
    kwargs = dict(data=setup["data"], model=str(setup["base"]), out=out, lora=setup["lora"],
                  controlnet=setup["controlnet"], variants="lora,fashionsd-x", limit=2, steps=2,
                  clip_model=str(tmp_path / "no-clip"), sweep=["lora_scale=0.5,1", "control_end=0.5,1"])
    metrics = evaluate(**kwargs).metrics
    sweep = metrics["sweep"]
    assert sweep["values"] == {"lora_scale": [0.5, 1.0], "control_end": [0.5, 1.0]}
    assert [entry["settings"] for entry in sweep["combinations"]] == [
        {"lora_scale": 0.5, "control_end": 0.5}, {"lora_scale": 0.5, "control_end": 1.0},
        {"lora_scale": 1.0, "control_end": 0.5}, {"lora_scale": 1.0, "control_end": 1.0}]
    assert [entry["default"] for entry in sweep["combinations"]] == [False, False, False, True]
    # fashionsd-x has a folder per combination (the default's is the evaluation's own); lora one per LoRA scale.
    images = [entry["images"] for entry in sweep["combinations"]]
    assert [i["fashionsd-x"] for i in images] == [
        "sweep/lora_scale-0.5__control_end-0.5/images/fashionsd-x",
        "sweep/lora_scale-0.5__control_end-1/images/fashionsd-x",
        "sweep/lora_scale-1__control_end-0.5/images/fashionsd-x", "images/fashionsd-x"]
    assert [i["lora"] for i in images] == ["sweep/lora_scale-0.5/images/lora"] * 2 + ["images/lora"] * 2
    assert sweep["combinations"][3]["metrics"]["fashionsd-x"] == metrics["variants"]["fashionsd-x"]
    assert sweep["combinations"][2]["metrics"]["lora"] == metrics["variants"]["lora"]
    assert sweep["combinations"][2]["metrics"]["fashionsd-x"] != metrics["variants"]["fashionsd-x"]
    for folder in {path for entry in images for path in entry.values()}:
        assert len(list((out / folder).glob("*.png"))) == 2 and len(list((out / folder).glob("*.key"))) == 2
    # Each image is what a plain evaluation at its settings makes: same key, same pixels.
    single = tmp_path / "single"
    evaluate(**{**kwargs, "out": single, "sweep": None, "lora_scale": 0.5, "control_end": 0.5})
    made = out / images[0]["fashionsd-x"]
    for key in made.glob("*.key"):
        assert key.read_text() == (single / "images" / "fashionsd-x" / key.name).read_text()
        assert np.array_equal(np.asarray(Image.open(key.with_suffix(".png"))),
                              np.asarray(Image.open(single / "images" / "fashionsd-x" / key.with_suffix(".png").name)))
    # The trade-off: silhouette IoU against colour and pattern accuracy (no CLIP here), the default marked.
    trade = sweep["trade_off"]
    assert (trade["x"], trade["y"], trade["default"]) == ("silhouette_iou", "attribute_accuracy", 3)
    assert len(trade["points"]) == 4 and trade["front"]
    table = (out / "metrics.md").read_text()
    assert "## Sweep (4 combinations)" in table and "| lora_scale | control_end | variant |" in table
    assert table.count("| default") == 2 and "Pareto front" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "<h2>Sweep</h2>" in page and page.count("data:image/png;base64,") == 2 * 4 + 1  # grid + the chart
    # A second run reuses every image; a changed value makes only the images it changes again.
    stamps = _stamps(out)
    evaluate(**kwargs)
    assert _stamps(out) == stamps
    evaluate(**{**kwargs, "sweep": ["lora_scale=0.5,1", "control_end=0.6,1"]})
    after = _stamps(out)
    changed = {path for path in stamps if after[path] != stamps[path]}
    new = set(after) - set(stamps)
    assert changed == set() and {str(Path(path).parent) for path in new} == {
        "sweep/lora_scale-0.5__control_end-0.6/images/fashionsd-x", "sweep/lora_scale-1__control_end-0.6/images/fashionsd-x"}


def test_the_pareto_front_leaves_out_dominated_points():
    from fashionsd_x.evaluate.sweep import pareto_front, trade_off

    points = [(0.2, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5), (0.1, 0.1), (0.9, 0.05)]
    # (0.4, 0.4) and (0.1, 0.1) are beaten on both axes by (0.5, 0.5); (0.9, 0.05) by (0.9, 0.1) on one, tied on
    # the other; equal points are both on the front. Sorted by the sketch axis.
    assert pareto_front(points) == [0, 1, 4, 3]
    assert pareto_front([(0.3, 0.3)]) == [0]
    entries = [{"settings": {"controlnet_scale": s}, "default": s == 1.0,
                "metrics": {"fashionsd-x": {"edge_f1": x, "color_accuracy": y, "pattern_accuracy": y / 2}}}
               for s, x, y in ((0.5, 0.2, 0.8), (1.0, 0.6, 0.6), (2.0, 0.5, 0.2))]
    trade = trade_off(entries)
    assert (trade["x"], trade["y"], trade["default"], trade["front"]) == ("edge_f1", "attribute_accuracy", 1, [0, 1])
    assert trade["points"][0] == [0.2, pytest.approx(0.6)] and trade["labels"][2] == "controlnet_scale=2"
    entries[0]["metrics"]["fashionsd-x"]["clip_score"] = 0.3  # only some have CLIP: no common text axis
    assert trade_off(entries) is None



def test_chart_labels_of_points_close_together_are_stacked_into_one():
    from fashionsd_x.evaluate.report import _label_groups, _short_labels

    # Spans 1 x 1: (0.1, 0) is within 0.15 of (0, 0) across and (0.2, 0.01) of it, so all three share one label
    # (joined through the middle one); (0.1, 0.5) is one label's height and more above; (1, 1) is far.
    points = [[0, 0], [1, 1], [0.1, 0.0], [0.2, 0.01], [0.1, 0.5]]
    assert _label_groups(points) == [[0, 2, 3], [1], [4]]
    assert _short_labels(["controlnet_scale=0.5, control_end=1", "controlnet_scale=1.5, control_end=0.6"]) == (
        "controlnet_scale, control_end", ["0.5, 1", "1.5, 0.6"])

BAD_SWEEPS = [(["strength=1,2"], "unknown setting 'strength'"), (["controlnet_scale=0.5,x"], "'x' is not a number"),
              (["control_end=0.5,1.5"], "control_end must be a finite number from 0 to 1"),
              (["guidance_scale=nan"], "guidance_scale must be a finite number"),
              (["lora_scale=1", "lora_scale=2"], "given twice"), (["lora_scale=1,1.0"], "the value 1 is given twice"),
              (["controlnet_scale"], "expected NAME=V1,V2"), (["controlnet_scale="], "expected NAME=V1,V2"),
              (["control_start=0,0.5", "control_end=0.4,1"], "combination control_start=0.5, control_end=0.4"),
              (["controlnet_scale=" + ",".join(str(v) for v in range(9)), "guidance_scale=" + ",".join(
                  str(v) for v in range(8))], "72 combinations")]


@pytest.mark.parametrize("sweep, message", BAD_SWEEPS, ids=[" ".join(s)[:40] for s, _ in BAD_SWEEPS])
def test_bad_sweep_text_is_one_line_before_anything_runs(tmp_path, sweep, message):
    from fashionsd_x.evaluate.sweep import SweepError

    with pytest.raises(SweepError, match=message.replace("(", r"\(")) as error:
        evaluate(tmp_path / "no-data", str(tmp_path / "no-base"), tmp_path / "out", sweep=sweep)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_a_sweep_of_settings_no_chosen_variant_uses_is_refused(setup, tmp_path):
    from fashionsd_x.evaluate.sweep import SweepError

    with pytest.raises(SweepError, match="changes only the fashionsd-x variant"):
        evaluate(setup["data"], str(setup["base"]), tmp_path / "o", lora=setup["lora"], variants="vanilla,lora",
                 sweep=["control_end=0.5,1"])


def test_images_keyed_before_the_new_settings_keep_their_keys():
    from fashionsd_x.evaluate.protocol import EvalSettings, _key_settings

    before = {"steps", "seed", "guidance_scale", "controlnet_scale", "scheduler", "resolution"}  # the old key's
    for variant in ("vanilla", "lora", "fashionsd-x"):
        assert set(_key_settings(variant, EvalSettings())) == before
    changed = EvalSettings(lora_scale=0.5, control_end=0.6)
    assert set(_key_settings("vanilla", changed)) == before  # neither changes the base alone
    assert set(_key_settings("lora", changed)) == before | {"lora_scale"}
    assert set(_key_settings("fashionsd-x", changed)) == before | {"lora_scale", "control_end"}

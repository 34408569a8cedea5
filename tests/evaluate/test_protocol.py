"""`fsdx evaluate` end to end on a small synthetic dataset with a tiny base, LoRA and ControlNet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.evaluate.protocol import METRICS, EvaluationError, evaluate
from fashionsd_x.models.tiny import build_tiny_base
from tests.test_generate import _save_controlnet, _save_lora


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
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
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


def test_images_are_reused_when_the_same_evaluation_runs_again(setup, tmp_path):
    kwargs = dict(data=setup["data"], model=str(setup["base"]), out=tmp_path / "e", lora=setup["lora"],
                  variants="lora", limit=2, steps=2, clip_model=str(tmp_path / "none"))
    evaluate(**kwargs)
    image = next((tmp_path / "e" / "images" / "lora").glob("*.png"))
    stamp = image.stat().st_mtime_ns
    evaluate(**kwargs)
    assert image.stat().st_mtime_ns == stamp
    evaluate(**{**kwargs, "steps": 3})  # other settings: regenerated
    assert image.stat().st_mtime_ns != stamp


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

"""Generation on a tiny base with a real LoRA and ControlNet: reproducibility, steering, metadata, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image, ImageDraw

from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.generate import GarmentGenerator, GenerationError, _a1111_line, generate, read_params
from fashionsd_x.models.base import load_base
from fashionsd_x.models.tiny import TinyConfig, build_tiny_base
from tests.conftest import garment

STEPS = 3


def _save_lora(base_dir: Path, out: Path, seed: int) -> Path:
    unet = load_base(base_dir).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(seed)
    for name, parameter in unet.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); make it matter
            torch.nn.init.normal_(parameter, std=0.3)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), safe_serialization=True)
    return out


def _save_controlnet(base_dir: Path, out: Path) -> Path:
    controlnet = ControlNetModel.from_unet(load_base(base_dir).unet, conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(1)
    # ControlNet starts with zero convolutions (no effect); give them weights so the sketch steers.
    for module in (controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                   controlnet.controlnet_mid_block):
        torch.nn.init.normal_(module.weight, std=1.0)
    controlnet.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    base = build_tiny_base(root / "base")
    return {"base": base, "lora": _save_lora(base, root / "lora", 0), "controlnet": _save_controlnet(base, root / "cn")}


@pytest.fixture(scope="module")
def generator(models) -> GarmentGenerator:
    return GarmentGenerator.load(models["base"], lora=models["lora"], controlnet=models["controlnet"], device="cpu")


def _sketch(shape: str, size=(48, 64)) -> Image.Image:
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    box = (6, 6, size[0] - 6, size[1] - 6)
    (draw.rectangle if shape == "box" else draw.ellipse)(box, outline=0, width=3)
    return image


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


def test_same_seed_same_image_and_batch_equals_single(generator):
    batch = generator("a red dress", sketch=_sketch("box"), num_images=3, steps=STEPS, seed=10)
    again = generator("a red dress", sketch=_sketch("box"), num_images=3, steps=STEPS, seed=10)
    assert [r.params.seed for r in batch] == [10, 11, 12]
    for one, two in zip(batch, again):
        assert np.array_equal(pixels(one), pixels(two))
    for k in range(3):
        single = generator("a red dress", sketch=_sketch("box"), num_images=1, steps=STEPS, seed=10 + k)[0]
        # batched CPU convolutions may round differently in the last bit; images agree to a grey level
        assert np.abs(pixels(single) - pixels(batch[k])).max() <= 2
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))


@pytest.fixture(scope="module")
def embedded() -> GarmentGenerator:
    """The embedded model: unlike the random tiny base, its prompts decide the garment's colour."""
    return GarmentGenerator.load(device="cpu")


@pytest.mark.parametrize("with_sketch", [True, False])
def test_several_prompts_in_one_batch_are_each_prompts_own_garments(embedded, with_sketch):
    generator, prompts = embedded, ["a red dress", "a blue dress"]
    sketch = _sketch("box", (96, 128)) if with_sketch else None
    batch = generator(prompts, sketch=sketch, num_images=2, steps=STEPS, seed=4)
    assert [(r.params.prompt, r.params.seed) for r in batch] == [(p, s) for p in prompts for s in (4, 5)]
    alone = [generator(prompt, sketch=sketch, num_images=2, steps=STEPS, seed=4) for prompt in prompts]
    for n in range(2):
        for k in range(2):
            assert np.abs(pixels(alone[n][k]) - pixels(batch[2 * n + k])).max() <= 2  # up to a batch's rounding
    # The prompts give garments further apart than a batch's rounding, so each image is its own prompt's.
    assert np.abs(pixels(alone[0][0]) - pixels(alone[1][0])).max() > 8
    with pytest.raises(GenerationError, match="at least one prompt"):
        generator([], sketch=sketch, steps=STEPS)


def test_each_prompt_may_have_its_own_sketch_in_one_batch(generator):
    prompts, sketches = ["a red dress", "a blue skirt"], [_sketch("box"), _sketch("ellipse")]
    batch = generator(prompts, sketch=sketches, num_images=2, steps=STEPS, seed=7)
    assert [r.params.prompt for r in batch] == [prompts[0]] * 2 + [prompts[1]] * 2
    for n, (prompt, sketch) in enumerate(zip(prompts, sketches)):
        alone = generator(prompt, sketch=sketch, num_images=2, steps=STEPS, seed=7)
        for k in range(2):
            assert batch[2 * n + k].params.sketch_sha256 == alone[k].params.sketch_sha256
            assert np.array_equal(np.asarray(batch[2 * n + k].sketch), np.asarray(alone[k].sketch))
            assert np.abs(pixels(alone[k]) - pixels(batch[2 * n + k])).max() <= 2  # up to a batch's rounding
    assert batch[0].params.sketch_sha256 != batch[2].params.sketch_sha256
    with pytest.raises(GenerationError, match="one sketch per prompt: 2 prompt"):
        generator(prompts, sketch=sketches[:1], steps=STEPS)


def test_the_sketch_steers_the_output(generator):
    box = generator("a red dress", sketch=_sketch("box"), steps=STEPS, seed=3)[0]
    ellipse = generator("a red dress", sketch=_sketch("ellipse"), steps=STEPS, seed=3)[0]
    assert np.abs(pixels(box) - pixels(ellipse)).mean() > 1.0


def test_any_sketch_size_is_padded_like_training(generator):
    portrait = generator("a dress", sketch=_sketch("box", (40, 80)), steps=STEPS, seed=1)[0]
    assert portrait.image.size == (32, 32)
    shown = np.asarray(portrait.sketch)
    assert shown.shape == (32, 32) and (shown[:, 0] == 255).all()  # white padding at the sides, not a stretch


def test_photo_is_sketched_with_the_dataset_function(generator):
    photo = garment(5, size=64, portrait=False)
    from_photo = generator("a top", photo=photo, steps=STEPS, seed=2)[0]
    from_sketch = generator("a top", sketch=extract_sketch(photo.resize((32, 32), Image.Resampling.LANCZOS),
                                                           SketchConfig()), steps=STEPS, seed=2)[0]
    assert from_photo.params.from_photo
    assert np.array_equal(pixels(from_photo), pixels(from_sketch))


def test_lora_scale_changes_output_and_returns_exactly(generator):
    full = generator("a skirt", steps=STEPS, seed=4)[0]
    none = generator("a skirt", steps=STEPS, seed=4, lora_scale=0.0)[0]
    back = generator("a skirt", steps=STEPS, seed=4)[0]
    assert np.abs(pixels(full) - pixels(none)).mean() > 1.0
    assert np.abs(pixels(full) - pixels(back)).max() <= 1


def test_png_metadata_reproduces_the_image(generator, models, tmp_path):
    sketch_path = tmp_path / "sketch.png"
    _sketch("ellipse").save(sketch_path)
    result = generator("navy trousers", sketch=sketch_path, steps=STEPS, seed=7, guidance_scale=5.0)[0]
    png = result.save(tmp_path / "out.png")
    params = read_params(png)
    assert params == result.params
    fresh = GarmentGenerator.load(params.model, lora=params.lora, controlnet=params.controlnet, device="cpu")
    replay = fresh(params.prompt, sketch=params.sketch, seed=params.seed, steps=params.steps,
                   guidance_scale=params.guidance_scale, lora_scale=params.lora_scale, scheduler=params.scheduler)[0]
    assert np.array_equal(np.asarray(replay.image), np.asarray(Image.open(png).convert("RGB")))


def test_bad_inputs_give_clear_errors(generator, models, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(GenerationError, match="cannot use .* as a sketch"):
        generator("a dress", sketch=tmp_path / "notes.png")
    with pytest.raises(GenerationError, match="prompt is empty"):
        generator("  ", steps=STEPS)
    with pytest.warns(UserWarning, match="truncated"):
        generator("a red dress with " + "very " * 100 + "long sleeves", steps=1)
    other = build_tiny_base(tmp_path / "other", TinyConfig(text_hidden=48))
    with pytest.raises(GenerationError, match="another base architecture"):
        GarmentGenerator.load(other, lora=models["lora"], device="cpu")
    with pytest.raises(GenerationError, match="does not match the base"):
        GarmentGenerator.load(other, controlnet=models["controlnet"], device="cpu")
    text_only = GarmentGenerator.load(models["base"], device="cpu")
    with pytest.raises(GenerationError, match="needs a ControlNet"):
        text_only("a dress", sketch=_sketch("box"))


def test_cli_writes_pngs_and_log_and_reports_bad_batch_lines(models, tmp_path):
    _sketch("box").save(tmp_path / "s.png")
    (tmp_path / "batch.jsonl").write_text(
        json.dumps({"prompt": "a red dress", "sketch": str(tmp_path / "s.png"), "n": 2, "seed": 5}) + "\n"
        + "{broken\n" + json.dumps({"prompt": "a top", "sketch": str(tmp_path / "missing.png")}) + "\n")
    command = [sys.executable, "-m", "fashionsd_x", "generate", "--model", str(models["base"]), "--lora",
               str(models["lora"]), "--controlnet", str(models["controlnet"]), "--batch", str(tmp_path / "batch.jsonl"),
               "--steps", "2", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0000_5.png", "0000_6.png"]
    log = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert [row["file"] for row in log] == ["0000_5.png", "0000_6.png"] and log[1]["seed"] == 6
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [row["line"] for row in skipped] == [2, 3]
    bad = subprocess.run([sys.executable, "-m", "fashionsd_x", "generate", "--model", str(tmp_path / "nowhere"),
                          "--prompt", "a dress"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_batch_generation_splits_across_two_processes(models, tmp_path, one_thread):
    """accelerate launch with 2 CPU processes: every item generated once, one merged log, one report."""
    items = [{"prompt": f"garment {k}", "seed": k} for k in range(4)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "29517", "-m", "fashionsd_x", "generate", "--model",
               str(models["base"]), "--batch", str(tmp_path / "batch.jsonl"), "--n", "1", "--steps", "2",
               "--out", str(tmp_path / "out")]
    env = {**__import__("os").environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0000_0.png", "0001_1.png", "0002_2.png",
                                                                       "0003_3.png"]
    log = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert sorted(row["file"] for row in log) == ["0000_0.png", "0001_1.png", "0002_2.png", "0003_3.png"]
    assert result.stdout.count("wrote 4 image(s)") == 1
    assert not list((tmp_path / "out").glob(".*.jsonl"))
    one = generate(model=str(models["base"]), batch=tmp_path / "batch.jsonl", n=1, steps=2, out=tmp_path / "one")
    for file in one.files:  # two processes write the files one process writes (one thread each, as they run)
        difference = np.abs(np.asarray(Image.open(file), dtype=int)
                            - np.asarray(Image.open(tmp_path / "out" / file.name), dtype=int))
        assert difference.max() <= 1, file.name  # at most a rounding of the last float bit


def strict_json(line: str) -> dict:
    """json.loads refusing NaN and Infinity, which json.dumps writes by default and no other reader accepts."""
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")
    return json.loads(line, parse_constant=refuse)


BAD_NUMBERS = [  # (keyword, value, what the message says)
    ("guidance_scale", float("nan"), "guidance_scale must be a finite number"),
    ("guidance_scale", float("inf"), "guidance_scale must be a finite number"),
    ("guidance_scale", 1e30, "from 0 to 100"),
    ("controlnet_scale", float("-inf"), "controlnet_scale"),
    ("lora_scale", float("nan"), "lora_scale"),
    ("steps", 0, "steps must be a whole number from 1 to 1000"),
    ("steps", 2.5, "steps"),
    ("steps", True, "steps"),
    ("steps", "3", "steps"),
    ("seed", -1, "seed must be a whole number from 0 to 9223372036854775807"),
    ("seed", 2**64, "seed must be a whole number from 0 to 9223372036854775807"),
    ("seed", float("nan"), "seed"),
    ("num_images", 0, "num_images"),
    ("num_images", 10**6, "num_images"),
    ("resolution", 10**9, "resolution"),
]


@pytest.mark.parametrize("name, value, message", BAD_NUMBERS, ids=[f"{n}={v!r}" for n, v, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_by_the_python_api(generator, name, value, message):
    with pytest.raises(GenerationError, match=message.replace("(", r"\(")):
        generator("a dress", **{name: value})


def test_the_last_seed_must_fit_too(generator):
    with pytest.raises(GenerationError, match="seed \\+ num_images - 1"):
        generator("a dress", seed=2**63 - 2, num_images=3)
    [last] = generator("a dress", seed=2**63 - 1, steps=1)  # the largest seed works
    assert last.params.seed == 2**63 - 1


def test_whole_floats_are_taken_as_ints(generator):
    [result] = generator("a dress", steps=2.0, seed=7.0)
    assert (result.params.steps, result.params.seed) == (2, 7) and isinstance(result.params.seed, int)


def test_non_finite_pixels_are_an_error_not_a_black_image(models):
    broken = GarmentGenerator.load(models["base"], device="cpu")  # its own copy of the weights
    with torch.no_grad():
        broken.base.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(GenerationError, match="non-finite pixels"):
        broken("a dress", steps=1)


class _Trap:
    """Unpickling this creates `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_named_safetensors_is_refused_unread(models, tmp_path):
    marker = tmp_path / "unpickled"
    lora = tmp_path / "lora"
    lora.mkdir()
    torch.save({"trap": _Trap(marker)}, lora / "pytorch_lora_weights.safetensors")
    controlnet = tmp_path / "controlnet"
    __import__("shutil").copytree(models["controlnet"], controlnet)
    torch.save({"trap": _Trap(marker)}, controlnet / "diffusion_pytorch_model.safetensors")
    # Pointed at a base that does not exist: the weights must be refused before any base is loaded.
    for options in ({"lora": lora}, {"controlnet": controlnet}):
        with pytest.raises(GenerationError, match="is not a valid safetensors file .* never pickles"):
            GarmentGenerator.load(tmp_path / "no-base", device="cpu", **options)
    cut = tmp_path / "cut.safetensors"
    data = (models["lora"] / "pytorch_lora_weights.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GenerationError, match="cut.safetensors is not a valid safetensors file"):
        GarmentGenerator.load(models["base"], lora=cut, device="cpu")
    assert not marker.exists()


def test_refused_runs_create_nothing_and_load_no_model(models, tmp_path):
    from fashionsd_x.generate import generate

    out = tmp_path / "new" / "out"
    nowhere = str(tmp_path / "no-base")  # loading it would fail: each refusal below must come first
    refusals = [({"guidance_scale": float("nan")}, "guidance_scale"), ({"guidance_scale": float("inf")}, "finite"),
                ({"seed": 2**64}, "from 0 to 9223372036854775807"), ({"n": 0}, "num_images"),
                ({"steps": 10**30}, "steps"), ({"lora_scale": float("nan")}, "lora_scale"),
                ({"sketch": tmp_path / "missing.png"}, "sketch not found"), ({"scheduler": "fast"}, "scheduler")]
    for options, message in refusals:
        with pytest.raises(GenerationError, match=message):
            generate(model=nowhere, prompt="a dress", out=out, **options)
    (tmp_path / "taken").write_text("a file")
    for taken in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(GenerationError, match="choose a folder"):
            generate(model=nowhere, prompt="a dress", out=taken)
    # A bad sketch found only once the model is loaded still leaves no folder.
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(GenerationError, match="cannot use"):
        generate(model=str(models["base"]), controlnet=models["controlnet"], prompt="a dress",
                 sketch=tmp_path / "notes.png", steps=1, out=out)
    assert not (tmp_path / "new").exists()


def test_batch_lines_with_bad_numbers_are_skipped_and_the_log_is_json(models, tmp_path):
    from fashionsd_x.generate import generate

    lines = ['{"prompt": "a top", "seed": 3, "n": 1}', '{"prompt": "a top", "seed": NaN}',
             '{"prompt": "a top", "n": 1e400}', '{"prompt": "a top", "seed": 18446744073709551616}',
             '{"prompt": "a top", "n": 2.5}', '{"prompt": "a top", "seed": -1}', '{"prompt": "a top", "sketch": 5}',
             '{"prompt": "a top", "seed": 9223372036854775807, "n": 2}', "[" * 100_000]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    run = generate(model=str(models["base"]), batch=tmp_path / "batch.jsonl", steps=1, out=tmp_path / "out")
    assert [file.name for file in run.files] == ["0000_3.png"]
    reasons = {row["line"]: row["reason"] for row in map(strict_json, (tmp_path / "out" / "skipped.jsonl")
                                                         .read_text().splitlines())}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "seed must be" in reasons[2] and "num_images" in reasons[3] and "9223372036854775807" in reasons[4]
    assert "num_images" in reasons[5] and "seed must be" in reasons[6] and "sketch must be a string" in reasons[7]
    assert "seed + num_images - 1" in reasons[8]
    [row] = map(strict_json, (tmp_path / "out" / "generations.jsonl").read_text().splitlines())
    assert (row["seed"], row["guidance_scale"]) == (3, 7.5)


def test_the_sketch_span_changes_the_image_only_when_it_is_shorter_than_all_the_steps(generator):
    common = dict(sketch=_sketch("box"), steps=4, seed=3)
    default = generator("a red dress", **common)[0]
    whole = generator("a red dress", control_start=0.0, control_end=1.0, **common)[0]
    early = generator("a red dress", control_end=0.5, **common)[0]  # the sketch for the first 2 of 4 steps only
    late = generator("a red dress", control_start=0.5, **common)[0]
    assert np.array_equal(pixels(whole), pixels(default))  # 0..1 is today's behaviour, bit for bit
    assert np.abs(pixels(early) - pixels(default)).mean() > 1.0
    assert np.abs(pixels(late) - pixels(early)).mean() > 1.0
    assert (early.params.control_start, early.params.control_end) == (0.0, 0.5)
    assert (default.params.control_start, default.params.control_end) == (0.0, 1.0)


def test_the_sketch_span_is_in_the_png_and_replays(generator, tmp_path):
    sketch_path = tmp_path / "sketch.png"
    _sketch("ellipse").save(sketch_path)
    result = generator("navy trousers", sketch=sketch_path, steps=STEPS, seed=7, control_start=0.2, control_end=0.7)[0]
    png = result.save(tmp_path / "out.png")
    params = read_params(png)
    assert params == result.params and (params.control_start, params.control_end) == (0.2, 0.7)
    with Image.open(png) as image:
        assert "Guidance Start: 0.2, Guidance End: 0.7" in image.text["parameters"]
    replay = generator(params.prompt, sketch=params.sketch, seed=params.seed, steps=params.steps,
                       control_start=params.control_start, control_end=params.control_end)[0]
    assert np.array_equal(np.asarray(replay.image), np.asarray(Image.open(png).convert("RGB")))
    # A PNG written before the span existed has no such field: it replays with the whole span.
    old = {key: value for key, value in json.loads(Image.open(png).text["fashionsd_x"]).items()
           if key not in ("control_start", "control_end")}
    assert type(params)(**old).control_end == 1.0


BAD_SPANS = [({"control_end": 0.0}, "control_start must be less than control_end"),
             ({"control_start": 0.6, "control_end": 0.4}, "got 0.6 and 0.4"),
             ({"control_start": 1.0}, "control_start must be less than control_end"),
             ({"control_end": 1.5}, "control_end must be a finite number from 0 to 1"),
             ({"control_start": -0.1}, "control_start must be a finite number from 0 to 1"),
             ({"control_end": float("nan")}, "control_end must be a finite number")]


@pytest.mark.parametrize("span, message", BAD_SPANS, ids=[str(span) for span, _ in BAD_SPANS])
def test_a_bad_sketch_span_is_a_one_line_error(generator, span, message):
    with pytest.raises(GenerationError, match=message) as error:
        generator("a dress", sketch=_sketch("box"), steps=1, **span)
    assert "\n" not in str(error.value)


def test_batch_lines_and_the_command_line_set_the_sketch_span(models, tmp_path):
    from fashionsd_x.generate import generate

    _sketch("box").save(tmp_path / "s.png")
    lines = [{"prompt": "a top", "sketch": str(tmp_path / "s.png"), "seed": 1},
             {"prompt": "a top", "sketch": str(tmp_path / "s.png"), "seed": 2, "control_end": 0.5},
             {"prompt": "a top", "seed": 3, "control_start": 0.9, "control_end": 0.2}]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = generate(model=str(models["base"]), controlnet=models["controlnet"], batch=tmp_path / "batch.jsonl", n=1,
                   steps=2, control_start=0.25, out=tmp_path / "out")
    spans = [(read_params(file).control_start, read_params(file).control_end) for file in run.files]
    assert spans == [(0.25, 1.0), (0.25, 0.5)]  # the command line's start, each line's own end
    assert [row["line"] for row in run.skipped] == [3] and "control_start must be less" in run.skipped[0]["reason"]
    with pytest.raises(GenerationError, match="control_start must be less than control_end"):
        generate(model=str(tmp_path / "no-base"), prompt="a dress", control_start=0.8, control_end=0.3,
                 out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_without_guidance_the_bases_recommendation_is_used(models, tmp_path):
    folder = shutil.copytree(models["base"], tmp_path / "base")
    (folder / "generation_defaults.json").write_text('{"guidance_scale": 3}')
    generator = GarmentGenerator.load(folder, device="cpu")
    recommended, explicit = generator("a red dress", steps=STEPS)[0], generator("a red dress", steps=STEPS,
                                                                                 guidance_scale=7.5)[0]
    assert (recommended.params.guidance_scale, explicit.params.guidance_scale) == (3.0, 7.5)
    assert np.array_equal(pixels(recommended), pixels(generator("a red dress", steps=STEPS, guidance_scale=3)[0]))
    assert not np.array_equal(pixels(recommended), pixels(explicit))
    run = generate(model=str(folder), prompt="a red dress", n=1, steps=STEPS, out=tmp_path / "out")  # fsdx generate
    assert read_params(run.files[0]).guidance_scale == 3.0
    assert GarmentGenerator.load(models["base"], device="cpu").default_guidance_scale == 7.5  # no file: SD's own


def _two_garment_page() -> Image.Image:
    """A landscape page: a box on the left, an ellipse on the right."""
    page = Image.new("L", (128, 64), 255)
    draw = ImageDraw.Draw(page)
    draw.rectangle((6, 6, 58, 58), outline=0, width=3)
    draw.ellipse((70, 6, 122, 58), outline=0, width=3)
    return page


def test_the_region_and_cleanup_are_in_the_png_and_replay(generator, tmp_path):
    sketch_path = tmp_path / "page.png"
    _two_garment_page().save(sketch_path)
    result = generator("a red dress", sketch=sketch_path, steps=STEPS, seed=3, sketch_region="0.5,0,1,1",
                       sketch_cleanup=False)[0]
    png = result.save(tmp_path / "out.png")
    params = read_params(png)
    assert params == result.params
    assert params.sketch_region == [0.5, 0.0, 1.0, 1.0] and params.sketch_cleanup is False
    replay = generator(params.prompt, sketch=params.sketch, seed=params.seed, steps=params.steps,
                       sketch_region=params.sketch_region, sketch_cleanup=params.sketch_cleanup)[0]
    assert np.array_equal(np.asarray(replay.image), np.asarray(Image.open(png).convert("RGB")))
    # The region changes what the model sees: only the right half's ellipse is left.
    whole = generator("a red dress", sketch=sketch_path, steps=STEPS, seed=3)[0]
    assert whole.params.sketch_region is None and whole.params.sketch_cleanup is True  # the default, recorded
    assert not np.array_equal(np.asarray(whole.sketch), np.asarray(result.sketch))
    # A PNG written before regions and cleanup existed replays as it was made.
    old = {key: value for key, value in json.loads(Image.open(png).text["fashionsd_x"]).items()
           if key != "sketch_region"}
    assert type(params)(**old).region is None


@pytest.mark.parametrize("region, message", [("0.5,0,1.5,1", "fractions from 0 to 1"), ("0,0,0,1", "x0 < x1"),
                                             ("left half", "x0,y0,x1,y1")])
def test_a_bad_region_is_refused_before_the_model_loads(tmp_path, region, message, capsys):
    from tests.test_cli import run_main  # fsdx's own entry point, in this process

    _two_garment_page().save(tmp_path / "page.png")
    code, err = run_main(capsys, "generate", "--model", tmp_path / "nowhere", "--prompt", "a dress", "--sketch",
                         tmp_path / "page.png", "--sketch-region", region, "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()


def test_explain_sketch_writes_what_the_model_sees_and_what_was_removed(models, tmp_path):
    page = np.full((300, 300), 250, np.uint8)
    for offset in range(0, 300, 15):  # a printed grid in pale grey
        page[offset, :] = page[:, offset] = 200
    image = Image.fromarray(page)
    ImageDraw.Draw(image).ellipse((60, 40, 240, 260), outline=0, width=5)
    image.save(tmp_path / "page.png")
    controlnet = shutil.copytree(models["controlnet"], tmp_path / "cn")  # a ControlNet trained on normalised sketches
    (controlnet / "train_config.yaml").write_text("sketch_conditioning: {normalize: true}\n")
    (tmp_path / "batch.jsonl").write_text(
        json.dumps({"prompt": "a dress", "sketch": str(tmp_path / "page.png"), "sketch_cleanup": "off"}) + "\n"
        + json.dumps({"prompt": "a dress", "sketch": str(tmp_path / "page.png"), "sketch_region": [0, 0, 2, 1]})
        + "\n")
    generate(model=str(models["base"]), lora=models["lora"], controlnet=controlnet, sketch=tmp_path / "page.png",
             prompt="a dress", n=1, steps=2, out=tmp_path / "out", explain_sketch=True)
    seen = np.asarray(Image.open(tmp_path / "out" / "0000_sketch.png"))
    assert 0.02 < (seen < 128).mean() < 0.15  # the ellipse alone, not the grid
    with Image.open(tmp_path / "out" / "0000_sketch_explained.png") as explained:
        assert json.loads(explained.text["removed"])["printing"] > 0.3
    batch = generate(model=str(models["base"]), lora=models["lora"], controlnet=controlnet,
                     batch=tmp_path / "batch.jsonl", n=1, steps=2, out=tmp_path / "batch", explain_sketch=True)
    assert read_params(batch.files[0]).sketch_cleanup is False
    assert (np.asarray(Image.open(tmp_path / "batch" / "0000_sketch.png")) < 128).mean() > 0.3  # the grid, kept
    assert [row["line"] for row in batch.skipped] == [2] and "fractions from 0 to 1" in batch.skipped[0]["reason"]


def test_a_rerun_into_the_same_folder_adds_images_and_every_log_row_has_its_image(models, tmp_path):
    from fashionsd_x.generate import generate

    first = generate(model=str(models["base"]), prompt="a red dress", n=2, steps=1, out=tmp_path / "out")
    kept = {file.name: file.read_bytes() for file in first.files}
    second = generate(model=str(models["base"]), prompt="a blue top", n=2, steps=1, out=tmp_path / "out")
    assert [file.name for file in first.files] == ["0000_0.png", "0000_1.png"]
    assert [file.name for file in second.files] == ["0001_0.png", "0001_1.png"]
    assert all((tmp_path / "out" / name).read_bytes() == data for name, data in kept.items())  # not replaced
    log = [strict_json(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert [row["file"] for row in log] == ["0000_0.png", "0000_1.png", "0001_0.png", "0001_1.png"]
    assert [row["prompt"] for row in log] == ["a red dress"] * 2 + ["a blue top"] * 2
    assert all(read_params(tmp_path / "out" / row["file"]).prompt == row["prompt"] for row in log)


def test_batch_fields_null_is_not_given_and_unknown_ones_are_refused(models, tmp_path):
    from fashionsd_x.generate import generate

    lines = [{"prompt": "a top", "negative_prompt": None, "n": None, "seed": 4},
             {"prompt": "a top", "colour": "red"}, {"prompt": "a top", "negative_prompt": 5}, {"prompt": None}]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = generate(model=str(models["base"]), batch=tmp_path / "batch.jsonl", negative_prompt="blurry", n=1, steps=1,
                   out=tmp_path / "out")
    [file] = run.files
    params = read_params(file)
    assert (params.negative_prompt, params.seed) == ("blurry", 4)  # null: the command line's value, never "None"
    reasons = {row["line"]: row["reason"] for row in run.skipped}
    assert "unknown field(s) 'colour'" in reasons[2] and "negative_prompt must be a string" in reasons[3]
    assert "needs a non-empty prompt" in reasons[4]


def test_nothing_to_do_is_not_success(models, tmp_path, capsys):
    from tests.test_cli import run_main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, err = run_main(capsys, "generate", "--model", models["base"], "--steps", "1", "--batch", empty, "--out",
                         tmp_path / "out")
    assert code == 2 and "has no line to generate" in err and not (tmp_path / "out").exists()


def test_a_long_negative_prompt_is_warned_once_like_the_prompt(models, tmp_path, capsys):
    from tests.test_cli import run_main

    long_text = " ".join(["blurry"] * 90)
    code, err = run_main(capsys, "generate", "--model", models["base"], "--steps", "1", "--n", "2", "--prompt",
                         long_text, "--negative-prompt", long_text, "--out", tmp_path / "out")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 2, err  # one per text, not one per image, in the project's own format
    assert warnings[0].startswith("fsdx generate: warning: prompt is 92 tokens")
    assert warnings[1].startswith("fsdx generate: warning: negative prompt is 92 tokens")


def test_the_infotext_uses_a1111_sampler_names_quoting_and_a_controlnet_unit(generator, tmp_path):
    """benchmarks/interop.py reads it with A1111's and the ControlNet extension's own parsers; here its form."""
    import re

    params = replace(generator("a dress, belted: long", steps=STEPS, seed=3, scheduler="euler_a")[0].params,
                     lora=str(tmp_path / "my lora, v2"), controlnet=str(tmp_path / "cn:1, final"))
    text = _a1111_line(params)
    *_, fields = text.split("\n")
    values = dict(re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', fields))
    assert values["Sampler"] == "Euler a" and values["Size"] == f"{params.resolution}x{params.resolution}"
    assert json.loads(values["LoRA"]) == str(tmp_path / "my lora, v2")  # quoted: the comma does not cut it
    unit = json.loads(values["ControlNet 0"])
    pairs = [item.strip().split(": ") for item in unit.split(",")]  # the extension's split: one ": " per item
    assert all(len(pair) == 2 for pair in pairs) and dict(pairs)["Model"] == "cn_1_ final"
    assert text.startswith("a dress, belted: long\n")

"""The embedded tiny model's recipe: synthetic data, a base from scratch, then the paper's LoRA and ControlNet.

`fsdx train tiny` runs every stage in order and resumes where it stopped: a finished stage is skipped, an
interrupted one continues from its newest checkpoint (every stage checkpoints as it goes), and one whose
earlier stages were trained on since it started is moved to <stage>.stale and trained again. Stages:
    0. data: a synthetic "catalogue" (solid and striped garments) and a "new collection" (dotted and checked
       ones), each built into a sketch-augmented dataset with `fsdx data build`'s function;
    1. VAE: an AutoencoderKL pretrained from scratch on the catalogue (not in the paper, which starts from
       Stable Diffusion's weights; nothing can be downloaded here);
    2. base: UNet and CLIP text encoder trained from scratch on the catalogue (also not in the paper);
    3. refine: the base trained on with offset noise (also not in the paper). At 32 x 32 latents the noisiest
       training step still shows each channel's mean, which is the garment's colour, so a base trained on plain
       noise takes the colour from the starting noise instead of the prompt; offset noise hides that mean;
    4. LoRA on the new collection with `fsdx train lora` (paper step 2, as the paper fine-tunes on Dress Code);
    5. ControlNet on the new collection's sketches with the LoRA fused (`fsdx train controlnet --lora`, step 3);
    6. consistency: that ControlNet continued briefly with the sketch-consistency loss (`--consistency-weight`,
       as ControlNet++ does; not in the paper). None in RecipeConfig skips it;
    7. framing: the ControlNet continued with every garment and its sketch scaled and moved (sketch-style
       augmentation's scale_range and shift), so small and off-centre garments are followed; what ships. None
       skips it, and the last ControlNet stage that ran ships.
The new collection varies each garment's size and place in the frame (no caption says them), so only the sketch
can tell the silhouette and the evaluation measures how far the ControlNet follows it.
`ship` then copies the result into the package (fashionsd_x/embedded), where it becomes the default model.
The settings differ from the paper's where a model trained from scratch on a CPU needs it (higher learning
rates, more steps); RecipeConfig lists them and the model card records them with times and hardware.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fashionsd_x.digests import combine, path_sha256
from fashionsd_x.models.components import standardize_text_encoder
from fashionsd_x.models.embedded import EMBEDDED_DIR
from fashionsd_x.models.tiny import TinyConfig
from fashionsd_x.models.tokenizer import write_vocab_and_merges
from fashionsd_x.recipes.ship import FINAL_BASE, ship_model
from fashionsd_x.train.config import BaseTrainConfig, ControlNetTrainConfig, LoraTrainConfig, TrainConfig
from fashionsd_x.train.vae import REPORT_NAME as VAE_REPORT
from fashionsd_x.train.vae import VaeTrainConfig

RESULT_NAME = "train_result.json"  # what core.train writes when a training stage has finished
RECIPE_NAME = "recipe.json"  # OUT/recipe.json: the recipe's config and each stage's figures
INPUTS_NAME = "recipe_inputs.json"  # in a stage's folder: digests of the earlier stages' results it started from
DATA_SPEC_NAME = "recipe_data_spec.json"  # in a dataset's folder: the DataSpec it was built from
STAGES = ("data", "vae", "base", "refine", "lora", "controlnet", "consistency", "framing",
          "evaluate")  # in the order they run
DIGESTS_FORMAT = 2  # recipe_inputs.json: 2 = sha256 of the inputs' content (weights, datasets)
LORA_FILE = "pytorch_lora_weights.safetensors"  # the LoRA stage's weights, as load_lora_weights reads them
FOLDER_FIELDS = ("data", "base", "lora", "init")  # config fields the recipe fills with its own folders
BASE_STAGES = ("vae", "base", "refine")  # what --base-from takes from a finished model instead of training
BASE_FILES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")  # a diffusers base


@dataclass(frozen=True)
class DataSpec:
    """One synthetic dataset of the recipe."""

    num: int  # garments (about 10% go to the held-out test split)
    seed: int  # synthesis seed
    patterns: tuple[str, ...]  # the patterns it shows
    framing: str = "centred"  # centred or varied (size and place drawn per garment): see data.synth.synthesize


def _controlnet_config(**changes: Any) -> ControlNetTrainConfig:
    """The recipe's ControlNet settings (stages 5 and 6), with CHANGES; a new config (and dict) on each call."""
    return ControlNetTrainConfig(**{
        "batch_size": 16, "lr": 2e-4, "snr_gamma": 5.0, "noise_offset": 0.1, "random_flip": True,
        "caption_dropout": 0.1, "cache_latents": True, "checkpoint_every": 250, "keep_checkpoints": 2,
        "num_validation_images": 8, "validation_steps": 20, "sketch_augment": {"probability": 0.7}, **changes})


@dataclass(frozen=True)
class RecipeConfig:
    """Every setting of the embedded model's recipe (the defaults made the shipped model)."""

    resolution: int = 128  # image side in pixels everywhere
    catalogue: DataSpec = DataSpec(8000, 1, ("solid", "stripes"))  # what the base learns from
    # The LoRA and ControlNet's "new collection": new prints beside plain garments, as a real collection has, so
    # that the LoRA keeps "plain" meaning plain.
    collection: DataSpec = DataSpec(3000, 2, ("solid", "dots", "checks"), "varied")
    vae: VaeTrainConfig = VaeTrainConfig(resolution=128, block_out_channels=(16, 32, 64), crop=64, batch_size=16,
                                         lr=5e-4, max_steps=2000, checkpoint_every=250)
    # UNet levels at 32, 16 and 8 latent pixels; cross-attention only at 8 (and the middle block): attention at
    # 32 x 32 would cost more than the rest of the UNet.
    model: TinyConfig = TinyConfig(sample_size=128, unet_channels=(32, 64, 128), vae_channels=(16, 32, 64),
                                   text_hidden=64, text_layers=2, attention_head_dim=8, attention_levels=(2,),
                                   norm_groups=8)
    # Each training stage's own typed config (the fields of `fsdx train base|lora|controlnet`); their resolution
    # is the recipe's, and their data and base are the recipe's folders.
    base: BaseTrainConfig = field(default_factory=lambda: BaseTrainConfig(
        max_steps=3500, batch_size=32, lr=5e-4, lr_warmup_steps=250, snr_gamma=5.0, caption_dropout=0.1,
        random_flip=True, cache_latents=True, checkpoint_every=250, keep_checkpoints=2, num_validation_images=8,
        validation_steps=20))
    # Stage 2 continued with offset noise (fresh optimizer, another seed so the batches differ from stage 2's).
    refine: BaseTrainConfig = field(default_factory=lambda: BaseTrainConfig(
        max_steps=9000, batch_size=32, lr=5e-4, lr_warmup_steps=100, snr_gamma=5.0, noise_offset=0.1,
        caption_dropout=0.1, random_flip=True, cache_latents=True, checkpoint_every=250, keep_checkpoints=2,
        num_validation_images=8, validation_steps=20, seed=1))
    # LoRA also on the ResNet convolutions and the transformer blocks' projections: the base has never drawn
    # a dot or a check, and its attention layers alone (8 x 8 latent pixels) cannot teach the finer levels to.
    # And on the text encoder's attention: it has never read the prints' words (the catalogue is solid and
    # striped), so a UNet-only LoRA drew the asked print for 11% of the benchmark's print prompts and this one
    # for 36% (text only, guidance 4; README, "What was tried"); the ControlNet stages after it train with both halves fused.
    # Rank 16 for 3,000 steps instead of rank 8 for 1,500: the smaller LoRA drew no checks at all for the
    # benchmark's "checked" prompts (text only, guidance 3: prints 28%, checks 0 of 18), this one prints 61%,
    # checks 6 of 18, with plain prompts plain 97% (92% before).
    lora: LoraTrainConfig = field(default_factory=lambda: LoraTrainConfig(
        max_steps=3000, batch_size=16, lr=1e-3, rank=16, snr_gamma=5.0, noise_offset=0.1, random_flip=True,
        cache_latents=True, checkpoint_every=250, keep_checkpoints=2, num_validation_images=8, validation_steps=20,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                        "conv1", "conv2"], train_text_encoder=True))
    # Sketches normalised (the default) and, for 70% of samples, redrawn in another style (data.augment), so the
    # ControlNet follows a designer's outline as well as the dataset's own sketches.
    controlnet: ControlNetTrainConfig = field(default_factory=lambda: _controlnet_config(max_steps=5000))
    # ControlNet steps when it continues from the ControlNet of the model --base-from names (it already follows
    # the dataset's sketches; the new conditioning and sketch styles need far fewer steps than from scratch).
    controlnet_continue_steps: int = 3000
    # Then a short run with the sketch-consistency loss, from the ControlNet above with the same settings (another
    # seed, so its draws differ): the denoising loss alone let garments spread past the drawn outline. Measured on
    # the sketch-style benchmark (README, "What was tried"): 250 steps at weight 0.25 raised IoU from 0.809 to
    # 0.835 and kept colour; 500 steps, or the weight 0.5, lost colour and fine lines. None: no such stage.
    consistency: ControlNetTrainConfig | None = field(default_factory=lambda: _controlnet_config(
        max_steps=250, consistency_weight=0.25, seed=1))
    # Then garments of every size and place: the ControlNet above continued (consistency loss kept, another seed)
    # with each sample's garment and sketch scaled by 0.55 to 1 and moved by up to 15% of the side (latents not
    # cached: the image moves with its sketch). A designer's garment on a page is often smaller than the
    # collection's (off-centre benchmark garments cover 9-24% of the padded square, the collection's a median 26%).
    # Measured at guidance 4 (README, "What was tried"): 500 steps raised benchmark IoU 0.862 -> 0.880, off centre
    # 0.806 -> 0.831; with the text-encoder LoRA, 1,000 steps instead of 500 raised off centre 0.832 -> 0.847 (the
    # mean 0.878 -> 0.873). None: no such stage.
    framing: ControlNetTrainConfig | None = field(default_factory=lambda: _controlnet_config(
        max_steps=1000, consistency_weight=0.25, seed=2, cache_latents=False,
        sketch_augment={"probability": 0.7, "scale_range": (0.55, 1.0), "shift": 0.15}))
    # The classifier-free guidance the evaluation uses and the shipped base recommends (generation_defaults.json,
    # the default of every entry point). Swept on the sketch-style benchmark (README, "Guidance"): this model,
    # trained from scratch, follows sketches better the lower its guidance, down to 2 (every style's IoU 0.856
    # or more; 0.850 at 2.5, 0.842 at 3.5), with colour 0.986 and plain garments plain at 2 to 3.5; prints 58%
    # at 2, 61% at 3, 69% at 3.5 (at least 50% wanted). The rank-8 LoRA's model was swept at 3 to 7.5.
    guidance_scale: float = 2.0
    seed: int = 0  # the initial weights, the sketch-style benchmark (each training stage has its own seed)
    eval_items: int = 100  # held-out new-collection garments the final evaluation generates per variant
    style_items: int = 12  # sketches per style of the sketch-style benchmark the final evaluation also runs


def init_base(out: Path, vae: Path, model: TinyConfig, seed: int) -> Path:
    """A base to pretrain: random UNet and text encoder of `model`, the pretrained VAE, the real CLIP tokenizer.

    Its scheduler is UniPC over SD's training schedule (the sampler generation uses by default); training
    reads the same config as a DDPM schedule.
    """
    from diffusers import AutoencoderKL, UniPCMultistepScheduler

    from fashionsd_x.models.tiny import tiny_pipeline

    pipeline = tiny_pipeline(model, seed)
    pipeline.vae = AutoencoderKL.from_pretrained(vae, use_safetensors=True)
    pipeline.register_modules(vae=pipeline.vae,
                              scheduler=UniPCMultistepScheduler.from_config(pipeline.scheduler.config))
    temporary = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    pipeline.save_pretrained(temporary, safe_serialization=True)
    standardize_text_encoder(temporary)
    write_vocab_and_merges(temporary / "tokenizer")  # the slow tokenizer's files too
    temporary.rename(out)
    return out


def train_tiny(out: Path = Path("outputs/recipe"), ship: bool = False, stop_after: str | None = None,
               base_from: Path | None = None) -> Path:
    """Train the embedded tiny FashionSD-X model from nothing, resuming where an earlier run stopped.

    Stages (each skipped when finished, continued from its newest checkpoint when interrupted, set aside and
    trained again when a stage it starts from was trained on since): synthetic catalogue and new collection ->
    datasets; VAE from scratch; UNet + text encoder from scratch on the catalogue, then on with offset noise;
    LoRA on the new collection (`fsdx train lora`); ControlNet on its sketches with the LoRA fused
    (`fsdx train controlnet --lora`); `fsdx evaluate` of the three variants on held-out new-collection garments.
    OUT/recipe.json records each stage's data size, steps, time, hardware and the evaluation. Takes hours on a
    2-core CPU and minutes on a GPU; run it in the background and run it again after a stop.

    Args:
        out: working folder of the recipe (datasets, stage outputs, checkpoints).
        ship: copy the finished model into the package (fashionsd_x/embedded), making it the default.
        stop_after: stop after this stage (data, vae, base, refine, lora, controlnet, consistency, framing or
            evaluate).
        base_from: a finished model of this recipe (e.g. fashionsd_x/embedded, with its recipe.json) whose base
            is taken instead of training stages 1 to 3 again; the LoRA is trained anew and the ControlNet
            continues from its ControlNet.
    """
    return run_recipe(RecipeConfig(), Path(out), ship_to=EMBEDDED_DIR if ship else None, stop_after=stop_after,
                      base_from=base_from)


def run_recipe(config: RecipeConfig, out: Path, ship_to: Path | None = None, stop_after: str | None = None,
               base_from: Path | None = None) -> Path:
    """train_tiny with any RecipeConfig (tests run a miniature one); ships to `ship_to` when given."""
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}")
    record = _read_record(out)
    record["config"] = _jsonable(asdict(config))
    runners = {"data": _data, "vae": _vae, "base": _base, "refine": _refine, "lora": _lora,
               "controlnet": _controlnet, "consistency": _consistency, "framing": _framing, "evaluate": _evaluate}
    if base_from is not None:
        imported = _imported_stages(Path(base_from))
        runners.update({stage: lambda out, config, stage=stage: _import_stage(out, Path(base_from), stage, imported)
                        for stage in BASE_STAGES})
        runners["controlnet"] = lambda out, config: _controlnet(out, config, Path(base_from) / "controlnet")
    for stage in STAGES:
        started = time.monotonic()
        figures = runners[stage](out, config)
        record.setdefault("stages", {})[stage] = {**figures, "wall_seconds_this_run": round(time.monotonic() - started, 1)}
        _write_record(out, record)
        if stage == stop_after:
            return out
    if ship_to is not None:
        ship_model(out, ship_to)
    return out


def _data(out: Path, config: RecipeConfig) -> dict[str, Any]:
    from fashionsd_x.data.build import build_dataset
    from fashionsd_x.data.synth import synthesize

    figures = {}
    for name, spec in (("catalogue", config.catalogue), ("collection", config.collection)):
        data, wanted = out / f"{name}_data", _jsonable(asdict(spec))
        built = data / DATA_SPEC_NAME  # what the dataset was built from; another spec rebuilds it
        if not (data / "build_report.json").is_file() or not built.is_file() or _read_json(built) != wanted:
            synthesize(out / name, num=spec.num, seed=spec.seed, size=config.resolution, patterns=spec.patterns,
                       framing=spec.framing)
            build_dataset("folder", out / name, data, resolution=config.resolution, num_proc=2)
            built.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
        report = _read_json(data / "build_report.json")
        figures[name] = {"rows": report["num_rows"], "patterns": list(spec.patterns), "framing": spec.framing,
                         "seed": spec.seed}
    return figures


def _imported_stages(source: Path) -> dict[str, Any]:
    """The base stages' figures recorded in a finished model's recipe.json (how its base was trained)."""
    record = source / RECIPE_NAME
    missing = [name for name in (RECIPE_NAME, *BASE_FILES) if not (source / name).exists()]
    if missing:
        raise FileNotFoundError(f"base_from {source} is not a model made by this recipe (no {missing[0]}); "
                                "give a folder such as fashionsd_x/embedded")
    stages = _read_json(record).get("stages", {})
    if any(stage not in stages for stage in BASE_STAGES):
        raise ValueError(f"base_from {source}: its recipe.json does not record the stages {', '.join(BASE_STAGES)}")
    return stages


def _import_stage(out: Path, source: Path, stage: str, imported: dict[str, Any]) -> dict[str, Any]:
    """A base stage taken from SOURCE: its recorded figures; the finished base is copied to OUT/refine once.

    OUT/refine/train_result.json is SOURCE's refine record, so the LoRA and ControlNet stages see a finished
    base, and a base taken from another model (another digest) sets them aside as after a retrain.
    """
    figures = {key: value for key, value in imported[stage].items()
               if key not in ("wall_seconds_this_run", "imported_from")}  # the base's own figures, wherever it went
    if stage == FINAL_BASE and _read_json_or_none(out / FINAL_BASE / RESULT_NAME) != figures:
        folder = out / FINAL_BASE
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in BASE_FILES:
            copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
            copy(source / name, folder / name)
        (folder / RESULT_NAME).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return {**figures, "imported_from": str(source)}


def _read_json_or_none(path: Path) -> Any:
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _vae(out: Path, config: RecipeConfig) -> dict[str, Any]:
    from fashionsd_x.train.vae import train_vae

    folder, inputs = out / "vae", {"catalogue_data": out / "catalogue_data"}
    report = folder / VAE_REPORT
    # Everything but how long it trains and how it checkpoints: more steps continue from the newest checkpoint.
    settings = {name: value for name, value in asdict(config.vae).items()
                if name not in ("max_steps", "checkpoint_every", "keep_checkpoints")}
    _set_aside_if_changed(folder, inputs, settings)
    if not _finished_vae(report, config.vae):
        if not (folder / INPUTS_NAME).is_file():
            _record_inputs(folder, inputs, settings)
        train_vae(config.vae, out / "catalogue_data", folder, resume="latest")
    return _read_json(report)


def _finished_vae(report: Path, vae: VaeTrainConfig) -> bool:
    return report.is_file() and _read_json(report)["steps"] >= vae.max_steps


def _base(out: Path, config: RecipeConfig) -> dict[str, Any]:
    from fashionsd_x.train.pretrain import train_base

    _base_init(out, config)
    inputs = {"base_init": out / "base_init", "catalogue_data": out / "catalogue_data"}
    return _train_stage(out / "base", config.base.max_steps, inputs, lambda: train_base(
        out / "catalogue_data", str(out / "base_init"), out / "base", resume="latest",
        **_settings(config.base, config)))


def _refine(out: Path, config: RecipeConfig) -> dict[str, Any]:
    from fashionsd_x.train.pretrain import train_base

    inputs = {"base": out / "base", "catalogue_data": out / "catalogue_data"}
    return _train_stage(out / FINAL_BASE, config.refine.max_steps, inputs, lambda: train_base(
        out / "catalogue_data", str(out / "base"), out / FINAL_BASE, resume="latest",
        **_settings(config.refine, config)))


def _lora(out: Path, config: RecipeConfig) -> dict[str, Any]:
    from fashionsd_x.train.lora import train_lora

    inputs = {FINAL_BASE: out / FINAL_BASE, "collection_data": out / "collection_data"}
    return _train_stage(out / "lora", config.lora.max_steps, inputs, lambda: train_lora(
        out / "collection_data", str(out / FINAL_BASE), out / "lora", resume="latest",
        **_settings(config.lora, config)))


def _controlnet(out: Path, config: RecipeConfig, init: Path | None = None) -> dict[str, Any]:
    """Stage 5; from INIT (the ControlNet of the model --base-from names) for controlnet_continue_steps when given."""
    if init is None:
        return _controlnet_stage(out, "controlnet", config.controlnet, config, None)
    settings = replace(config.controlnet, max_steps=config.controlnet_continue_steps)
    return _controlnet_stage(out, "controlnet", settings, config, ("init", init))


def _consistency(out: Path, config: RecipeConfig) -> dict[str, Any]:
    """Stage 6: the ControlNet of stage 5 continued with the sketch-consistency loss (skipped when None)."""
    if config.consistency is None:
        return {"skipped": "RecipeConfig.consistency is None"}
    return _controlnet_stage(out, "consistency", config.consistency, config, ("controlnet", out / "controlnet"))


def _framing(out: Path, config: RecipeConfig) -> dict[str, Any]:
    """Stage 7: the ControlNet of the stage before continued with garments scaled and moved (skipped when None)."""
    if config.framing is None:
        return {"skipped": "RecipeConfig.framing is None"}
    previous = _controlnet_stages(config)[-2]
    return _controlnet_stage(out, "framing", config.framing, config, (previous, out / previous))


def _controlnet_stage(out: Path, stage: str, settings: ControlNetTrainConfig, config: RecipeConfig,
                      init: tuple[str, Path] | None) -> dict[str, Any]:
    """`fsdx train controlnet` into OUT/STAGE with the LoRA fused, from INIT (its input name and folder) if given."""
    from fashionsd_x.train.controlnet import train_controlnet

    inputs = {FINAL_BASE: out / FINAL_BASE, "lora": out / "lora" / LORA_FILE, "collection_data": out / "collection_data",
              **dict([init] if init is not None else [])}
    figures = _train_stage(out / stage, settings.max_steps, inputs, lambda: train_controlnet(
        out / "collection_data", str(out / FINAL_BASE), out / stage, lora=out / "lora", resume="latest",
        init=None if init is None else str(init[1]), **_settings(settings, config)))
    return {**figures, **({"continued_from": str(init[1])} if init is not None else {})}


def _controlnet_stages(config: RecipeConfig) -> list[str]:
    """The ControlNet stages that run, in order: stage 5, then 6 and 7 unless they are off."""
    return ["controlnet", *(name for name, stage in (("consistency", config.consistency), ("framing", config.framing))
                            if stage is not None)]


def final_controlnet(out: Path, config: RecipeConfig) -> Path:
    """The recipe's finished ControlNet: that of its last ControlNet stage that is on (7, else 6, else 5)."""
    return out / _controlnet_stages(config)[-1]


def _evaluate(out: Path, config: RecipeConfig) -> dict[str, Any]:
    """The paper's comparison (vanilla, LoRA, LoRA + ControlNet) on the new collection's test split, and on the
    sketch-style benchmark (designers' sketches drawn by other code), both redone when a model stage changed."""
    from fashionsd_x.data.sketch_styles import make_sketch_styles
    from fashionsd_x.evaluate.protocol import evaluate

    controlnet = final_controlnet(out, config)
    inputs = {FINAL_BASE: out / FINAL_BASE, "lora": out / "lora" / LORA_FILE, "controlnet": controlnet,
              "collection_data": out / "collection_data"}
    styles = out / "sketch_styles"
    if not (styles / "dataset_dict.json").is_file():
        make_sketch_styles(styles, per_style=config.style_items, seed=config.seed, resolution=config.resolution)
    figures = {}
    for name, data, limit in (("eval", out / "collection_data", config.eval_items), ("eval_styles", styles, None)):
        folder = out / name
        settings = {"guidance_scale": config.guidance_scale}
        if not _fresh(folder, {**inputs, "data": data}, settings):  # evaluate reuses only images of these weights
            (folder / INPUTS_NAME).unlink(missing_ok=True)
            evaluate(data, str(out / FINAL_BASE), folder, lora=out / "lora", controlnet=controlnet,
                     limit=limit, guidance_scale=config.guidance_scale)
            _record_inputs(folder, {**inputs, "data": data}, settings)
        result = _read_json(folder / "metrics.json")
        figures[name] = {"items": result["num_items"], "split": result["split"], "variants": result["variants"],
                         **({"by_style": result["by_style"]} if "by_style" in result else {})}
    return {**figures["eval"], "styles": figures["eval_styles"]}


def _fresh(folder: Path, inputs: dict[str, Path], settings: dict[str, Any]) -> bool:
    """True when FOLDER holds finished metrics made from exactly these inputs and settings."""
    return (folder / "metrics.json").is_file() and _recorded_matches(folder, inputs, settings)


def _digests(inputs: dict[str, Path], settings: dict[str, Any]) -> dict[str, Any]:
    """sha256 of each input's content (weights, datasets; see fashionsd_x.digests) and of the settings."""
    return {"format": DIGESTS_FORMAT, **{name: path_sha256(path) for name, path in inputs.items()},
            **({"settings": combine([("settings", json.dumps(_jsonable(settings), sort_keys=True))])}
               if settings else {})}


def _recorded_matches(folder: Path, inputs: dict[str, Path], settings: dict[str, Any]) -> bool:
    """Whether FOLDER/recipe_inputs.json names these inputs' digests.

    A record from before content digests (no format field) is taken as it stands, once, and rewritten with
    today's digests, so an existing run is not trained again only because the record's format changed.
    """
    recorded = folder / INPUTS_NAME
    if not recorded.is_file():
        return False
    if _read_json(recorded).get("format") != DIGESTS_FORMAT:
        print(f"{folder.name}: inputs recorded before content digests; adopting today's")
        _record_inputs(folder, inputs, settings)
    return _read_json(recorded) == _digests(inputs, settings)


def _record_inputs(folder: Path, inputs: dict[str, Path], settings: dict[str, Any] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{INPUTS_NAME}.tmp"
    temporary.write_text(json.dumps(_digests(inputs, settings or {}), indent=2) + "\n", encoding="utf-8")
    temporary.replace(folder / INPUTS_NAME)


def _set_aside_if_changed(folder: Path, inputs: dict[str, Path], settings: dict[str, Any] | None = None) -> None:
    """Move FOLDER to FOLDER.stale (replacing an older one) when it was made from other inputs than these."""
    if (folder / INPUTS_NAME).is_file() and not _recorded_matches(folder, inputs, settings or {}):
        stale = folder.with_name(f"{folder.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        folder.rename(stale)
        print(f"{folder.name}: what it was made from changed since; moved to {stale} and made again")


def _base_init(out: Path, config: RecipeConfig) -> None:
    """The randomly initialised base with the trained VAE, made again when the VAE or the architecture changed."""
    folder, inputs = out / "base_init", {"vae": out / "vae" / "vae"}
    settings = {"model": asdict(config.model), "seed": config.seed}
    _set_aside_if_changed(folder, inputs, settings)
    if not (folder / "model_index.json").is_file():
        init_base(folder, out / "vae" / "vae", config.model, config.seed)
        _record_inputs(folder, inputs, settings)


def _train_stage(folder: Path, steps: int, inputs: dict[str, Path], run: Any) -> dict[str, Any]:
    """Run a `fsdx train` stage unless its result says it finished `steps` steps; its figures either way.

    INPUTS are what it starts from: earlier stages' weights and its dataset. FOLDER/recipe_inputs.json records
    the sha256 of their content when the stage starts; when one has changed since (an earlier stage was
    trained on or again, the dataset was rebuilt), the stage's output and checkpoints belong to the old
    inputs, so the folder is moved to FOLDER.stale (replacing an older one) and the stage is trained again.
    """
    result = folder / RESULT_NAME
    _set_aside_if_changed(folder, inputs)
    if not (result.is_file() and _read_json(result)["steps"] >= steps):
        if not (folder / INPUTS_NAME).is_file():
            _record_inputs(folder, inputs)
        run()
    return _read_json(result)


def _settings(stage: TrainConfig, config: RecipeConfig) -> dict[str, Any]:
    """A stage config's fields as the trainer's keyword settings: the recipe's resolution, the recipe's folders
    (passed separately) left out."""
    values = {item.name: getattr(stage, item.name) for item in fields(stage) if item.name not in FOLDER_FIELDS}
    return {**values, "resolution": config.resolution}


def _read_record(out: Path) -> dict[str, Any]:
    path = out / RECIPE_NAME
    return _read_json(path) if path.is_file() else {}


def _write_record(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{RECIPE_NAME}.tmp"
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    temporary.replace(out / RECIPE_NAME)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = ["DataSpec", "RecipeConfig", "init_base", "train_tiny"]

"""`fsdx ablate`: how the results grow with the amount and the diversity of the training data (the paper's open
question 2, issue 15).

Steps, each resumable:
    1. Subsets of the train split. One seeded permutation of its rows; the subset of fraction f is its first
       round(f * n) rows, so every smaller subset lies inside every larger one. A category group's subset is the
       first rows of the same permutation that are in those categories, as many as the largest fraction subset
       they can fill: the same size, less diversity. Each is saved as a dataset folder like `fsdx data build`'s,
       its test split the full dataset's.
    2. Per subset, a LoRA (`fsdx train lora`) and a ControlNet with that LoRA fused (`fsdx train controlnet
       --lora`), as the embedded recipe trains them; both run through accelerate inside the trainers.
    3. Per subset, `fsdx evaluate` on the full dataset's test split (the same items for every run); the base
       alone (vanilla) once, as it does not depend on the subset.
    4. DIR/ablation.json (one entry per run), DIR/ablation.md (the table), DIR/ablation.png (each metric
       against training-set size, per variant).
A stage whose folder holds finished output made from the same inputs (content digests) and settings is
skipped; a partly trained one continues from its newest checkpoint (the trainers' resume latest); one made from
other inputs or settings is moved to <folder>.stale and made again.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fashionsd_x.digests import combine, model_sha256, path_sha256
from fashionsd_x.evaluate.metrics import DEFAULT_CLIP
from fashionsd_x.evaluate.names import METRICS, VARIANTS
from fashionsd_x.files import write_text
from fashionsd_x.limits import MAX_ITEMS, MAX_TRAIN_STEPS, check_at_most, check_processes
from fashionsd_x.models.embedded import embedded_model, is_embedded
from fashionsd_x.recipes.tiny import FOLDER_FIELDS, INPUTS_NAME, RESULT_NAME, RecipeConfig
from fashionsd_x.train.config import (RUN_FIELDS, STEPS_WHY, ConfigError, ControlNetTrainConfig, LoraTrainConfig,
                                      TrainConfig, read_yaml, resolve_config)

RECORD_JSON, RECORD_MD, RECORD_PNG = "ablation.json", "ablation.md", "ablation.png"
SUBSET_KEY = "subset"  # in a subset's build_report.json: what it was cut from (a changed one is cut again)
TRAINERS = {"lora": LoraTrainConfig, "controlnet": ControlNetTrainConfig}
SET_PER_RUN = set(FOLDER_FIELDS)  # data, base, lora, init: the ablation's own folders and --controlnet-init
# Settings that change how a run is watched or stored, not its weights: changing them reuses a finished run.
OBSERVING = set(RUN_FIELDS) - {"epochs", "max_steps"}
# What the embedded model's runs do not need from the recipe's settings: no validation images (the evaluation
# makes them), and a checkpoint every 50 steps so a stop loses little of a short run.
EMBEDDED_CHANGES = {"num_validation_images": 0, "checkpoint_every": 50}
MAX_RUNS = 64  # subsets of one ablation: each trains a LoRA and a ControlNet and is evaluated


class AblationError(ValueError):
    """Bad ablation input (fractions, categories, splits, variants); one line, raised before any training."""


@dataclass(frozen=True)
class Subset:
    """One training subset of the ablation."""

    name: str  # folder name under DIR/subsets and DIR/runs
    fraction: float | None  # share of the train split; None for a category subset
    categories: tuple[str, ...] | None  # the only categories it holds; None: every category
    indices: tuple[int, ...]  # its rows of the train split, ascending


@dataclass(frozen=True)
class EvalOptions:
    """The `fsdx evaluate` settings every run's evaluation uses (what makes its images and scores)."""

    split: str = "test"
    limit: int | None = None
    steps: int = 20
    seed: int = 0
    guidance_scale: float | None = None  # None until the base's recommendation is read
    clip_model: str = DEFAULT_CLIP
    inception_weights: str | None = None


@dataclass
class AblationResult:
    """Where the ablation wrote its outputs, and ablation.json's content."""

    out: Path
    record: dict[str, Any]


def ablate(data: Path, fractions: Sequence[float] = (0.25, 0.5, 1.0), categories: list[str] | None = None,
           out: Path = Path("outputs/ablation"), model: str | None = None, subset_seed: int = 0,
           category_column: str = "category", lora_steps: int | None = None, controlnet_steps: int | None = None,
           controlnet_init: str | None = None, lora_config: Path | None = None, controlnet_config: Path | None = None,
           num_processes: int = 1, variants: str | None = None, split: str = "test", limit: int | None = None,
           steps: int = 20, eval_seed: int = 0, guidance_scale: float | None = None, clip_model: str = DEFAULT_CLIP,
           inception_weights: Path | None = None, overrides: dict[str, Any] | None = None) -> AblationResult:
    """Train a LoRA and a ControlNet on nested subsets of the train split and evaluate each on the same test split.

    Subsets: the first round(f * n) rows of one seeded permutation of the n train rows for each fraction f (each
    smaller subset inside every larger one) and, per --categories group, rows of only those categories at the
    size of the largest fraction subset they can fill. Each run trains as `fsdx train lora` and `fsdx train
    controlnet --lora` do (any of their settings passes through as --field value, to every stage that has it;
    --lora-FIELD or --controlnet-FIELD for one stage only, e.g. --max-steps 300 --controlnet-lr 2e-4) and is
    evaluated as `fsdx evaluate` does; vanilla (the base alone) once. Writes OUT/ablation.json (one entry per
    run: subset, size, categories, digests of its data, settings and weights, metrics per variant),
    OUT/ablation.md and OUT/ablation.png (each metric against training-set size). Run it again after a stop: a
    finished stage is skipped, an interrupted one resumes from its checkpoint, one whose settings changed
    is trained again.

    Args:
        data: dataset folder from `fsdx data build` (train and test splits).
        fractions: shares of the train split to train on, each in (0, 1].
        categories: diversity subsets, one per value: a category, or several joined by commas (e.g. dress
            dress,skirt), each at the size of the largest fraction subset it can fill.
        out: output folder (subsets/, runs/, vanilla/ and the ablation files).
        model: base model (hub id, diffusers folder or .safetensors file); tiny or none: the embedded base,
            trained with the embedded recipe's LoRA and ControlNet settings unless --lora-config or
            --controlnet-config are given.
        subset_seed: seed of the permutation the subsets are cut from.
        category_column: the dataset column --categories selects on.
        lora_steps: LoRA steps of every run (else --max-steps, the config's, or one epoch).
        controlnet_steps: ControlNet steps of every run (else --max-steps, the config's, or one epoch); 0: no
            ControlNet is trained, and the fashionsd-x variant uses --controlnet-init as it is, or is left out.
        controlnet_init: ControlNet (folder or hub id) every run's ControlNet starts from, instead of a copy of
            the base UNet's encoder.
        lora_config: YAML of LoRA settings (a preset in configs/ or a run's train_config.yaml).
        controlnet_config: YAML of ControlNet settings (its data, base, lora and init are the ablation's own).
        num_processes: data-parallel training processes (GPUs, or CPU processes), launched via accelerate.
        variants: comma-separated variants to evaluate (vanilla, lora, fashionsd-x); default: all there are.
        split: the dataset split every run is evaluated on.
        limit: evaluate only the first N items of the split.
        steps: denoising steps per evaluation image.
        eval_seed: evaluation image i uses eval_seed + i.
        guidance_scale: classifier-free guidance weight of the evaluation (default: the base's recommendation, as
            in `fsdx evaluate`).
        clip_model: CLIP for the CLIP score: hub id (cached) or local folder.
        inception_weights: local Inception-v3 weights file for FID/KID.
        overrides: any other training setting by name (values as YAML scalars); lora_NAME / controlnet_NAME for
            one stage only.
    """
    # 1. Everything that can be wrong is checked before any training: first the numbers and settings (before the
    # data is read), then data, subsets and variants.
    _check_counts(fractions, categories, lora_steps, controlnet_steps, num_processes, limit)
    options = _eval_options(split, limit, steps, eval_seed, guidance_scale, clip_model, inception_weights)
    # Each stage's settings alone, checked now; every run's copy (with its folders) is made below.
    stage_settings(_stage_defaults(model), lora_config, controlnet_config, lora_steps, controlnet_steps,
                   overrides or {})
    out, data = Path(out), Path(data)
    source = open_source(data, split)
    base = _base_folder(model)
    rows = _column(source, category_column, categories)
    subsets = plan_subsets(rows, source["train"].num_rows, fractions, _groups(categories), subset_seed)
    configs = stage_configs(base, out, subsets, _stage_defaults(model), lora_config, controlnet_config,
                            lora_steps, controlnet_steps, controlnet_init, overrides or {})
    chosen = _variants(variants, controlnet_steps == 0, controlnet_init)
    if options.guidance_scale is None:  # the base's recommendation (fsdx evaluate's default), recorded with the runs
        from fashionsd_x.models.base import recommended_guidance

        options = replace(options, guidance_scale=recommended_guidance(base))
    # 2-3. Subsets, training and evaluation, run by run; vanilla once.
    vanilla = _evaluate(out / "vanilla", data, base, None, None, "vanilla", options) if "vanilla" in chosen else None
    runs, evaluations = [], [vanilla]
    for subset in subsets:
        write_subset(source, data, subset, out / "subsets" / subset.name, subset_seed)
        entry, evaluation = run_one(out, data, base, subset, configs[subset.name], controlnet_init, chosen, options,
                                    num_processes)
        entry["category_counts"] = _counts([rows[index] for index in subset.indices]) if rows else {}
        runs.append(entry)
        evaluations.append(evaluation)
    # 4. The record, its table and its chart.
    record = {"data": str(data), "data_sha256": path_sha256(data), "model": base, "base_sha256": model_sha256(base),
              "train_rows": source["train"].num_rows, "subset_seed": subset_seed, "evaluation": asdict(options),
              "variants": chosen, "vanilla": vanilla["variants"]["vanilla"] if vanilla else None,
              "unavailable": {name: why for evaluation in evaluations if evaluation
                              for name, why in evaluation.get("unavailable", {}).items()},
              "runs": runs}
    write_outputs(out, record)
    return AblationResult(out, record)


def _check_counts(fractions: Sequence[float], categories: list[str] | None, lora_steps: int | None,
                  controlnet_steps: int | None, num_processes: int, limit: int | None) -> None:
    """Every count within its bound (issue 29), before the data is read or anything trained."""
    runs = len(fractions) + len(categories or [])
    check_at_most("runs (--fractions and --categories)", runs, MAX_RUNS,
                  "each trains a LoRA and a ControlNet and is evaluated", AblationError)
    for option, steps in (("--lora-steps", lora_steps), ("--controlnet-steps", controlnet_steps)):
        if steps is not None:
            check_at_most(option, steps, MAX_TRAIN_STEPS, STEPS_WHY, AblationError)
    check_processes("--num-processes", num_processes, AblationError)
    if limit is not None:
        check_at_most("--limit", limit, MAX_ITEMS, "evaluated items; Dress Code has 53,792 garments", AblationError)


def open_source(data: Path, split: str) -> Any:
    """The dataset to cut subsets from, with a non-empty train split and the evaluation split."""
    from datasets import DatasetDict, load_from_disk

    if not (data / "dataset_dict.json").is_file():
        raise AblationError(f"{data} is not a dataset built by `fsdx data build` (no dataset_dict.json)")
    source = load_from_disk(str(data))
    if not isinstance(source, DatasetDict):
        raise AblationError(f"{data} holds a single split; the ablation needs a train and a {split!r} split")
    for name in dict.fromkeys(("train", split)):
        if name not in source or source[name].num_rows == 0:
            raise AblationError(f"dataset {data} has no {name!r} split with rows (splits: {', '.join(source)}); "
                                "the ablation trains on train and evaluates on --split")
    return source


def _base_folder(model: str | None) -> str:
    """A model as the trainers and the evaluation load it: a local path made absolute, a hub id as it is; the
    embedded base's folder for tiny or none."""
    if is_embedded(model):
        return str(embedded_model().base)
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _column(source: Any, column: str, categories: list[str] | None) -> list[str] | None:
    """The train split's category of each row (None without that column, an error if --categories needs it)."""
    if column not in source["train"].column_names:
        if not categories:
            return None
        raise AblationError(f"--categories needs a {column!r} column, which the dataset lacks (it has "
                            f"{', '.join(source['train'].column_names)}); name another with --category-column")
    return [str(value) for value in source["train"][column]]


def _groups(categories: list[str] | None) -> list[tuple[str, ...]]:
    """--categories values as groups: "dress,skirt" is one group of two."""
    groups = [tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
              for value in categories or []]
    if any(not group for group in groups):
        raise AblationError(f"--categories has an empty value in {categories}; give category names")
    if len(set(groups)) < len(groups):
        raise AblationError(f"--categories repeats a group: {categories}")
    return groups


def plan_subsets(row_categories: Sequence[str] | None, num_rows: int, fractions: Sequence[float],
                 groups: Sequence[tuple[str, ...]], seed: int) -> list[Subset]:
    """The fraction subsets (prefixes of one seeded permutation, smallest first), then the category subsets.

    A category group's subset is the first rows of the same permutation in its categories, as many as the
    largest fraction subset holds that the group can fill: the same size, fewer categories.
    """
    fractions = _check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(num_rows).tolist()
    subsets = []
    for fraction in sorted(fractions):
        size = int(fraction * num_rows + 0.5)  # rounded half up: 0.5 of 3 rows is 2
        if size == 0:
            raise AblationError(f"fraction {fraction:g} of the {num_rows} train rows is an empty subset; "
                                f"use at least {1 / num_rows:.3g}")
        subsets.append(Subset(f"fraction-{fraction:g}", fraction, None, tuple(sorted(order[:size]))))
    sizes = [len(subset.indices) for subset in subsets]
    for group in groups:
        subsets.append(_category_subset(group, order, row_categories or [], sizes))
    return subsets


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    values = [float(value) for value in fractions]
    if not values:
        raise AblationError("--fractions is empty; give shares of the train split such as 0.25 0.5 1")
    bad = [value for value in values if not (math.isfinite(value) and 0 < value <= 1)]
    if bad:
        raise AblationError(f"--fractions must each be in (0, 1], got {bad[0]:g}")
    if len(set(values)) < len(values):
        raise AblationError(f"--fractions repeats a value: {' '.join(f'{value:g}' for value in values)}")
    return values


def _category_subset(group: tuple[str, ...], order: list[int], row_categories: Sequence[str],
                     sizes: list[int]) -> Subset:
    known = sorted(set(row_categories))
    unknown = [name for name in group if name not in known]
    if unknown:
        raise AblationError(f"unknown category {unknown[0]!r} in --categories; the train split has "
                            f"{', '.join(known)}")
    rows = [index for index in order if row_categories[index] in group]
    fitting = [size for size in sizes if size <= len(rows)]
    if not fitting:
        raise AblationError(f"categories {', '.join(group)} have {len(rows)} train rows, fewer than the smallest "
                            f"fraction subset ({min(sizes)}); add categories or a smaller fraction")
    name = "categories-" + "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", category) for category in group)
    return Subset(name, None, group, tuple(sorted(rows[:max(fitting)])))


def _stage_defaults(model: str | None) -> dict[str, dict[str, Any]]:
    """Each stage's settings before --*-config and the command line: the embedded recipe's for the embedded base
    (its resolution, LoRA targets, sketch augmentation; shortened, see EMBEDDED_CHANGES), else the trainers'."""
    if not is_embedded(model):
        return {"lora": {}, "controlnet": {}}
    recipe = RecipeConfig()
    return {stage: {**{item.name: getattr(config, item.name) for item in fields(config)
                       if item.name not in SET_PER_RUN and item.name != "max_steps"},
                    "resolution": recipe.resolution, **EMBEDDED_CHANGES}
            for stage, config in (("lora", recipe.lora), ("controlnet", recipe.controlnet))}


def route_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """--name value to every stage with that setting; --lora-name / --controlnet-name to that stage only."""
    names = {stage: {item.name for item in fields(cls)} for stage, cls in TRAINERS.items()}
    routed: dict[str, dict[str, Any]] = {stage: {} for stage in TRAINERS}
    for key, value in overrides.items():
        name = key.lstrip("-").replace("-", "_")
        stages = [stage for stage in TRAINERS if name in names[stage]]
        if not stages:
            prefix, _, rest = name.partition("_")
            if prefix in TRAINERS and rest in names[prefix]:
                stages, name = [prefix], rest
        if not stages:
            raise ConfigError(f"--{key.replace('_', '-')} is no setting of `fsdx train lora` or `fsdx train "
                              "controlnet` (prefix lora- or controlnet- to set one stage only)")
        if name in SET_PER_RUN:
            raise ConfigError(f"--{key.replace('_', '-')} is set by the ablation itself (each run's data, base and "
                              "LoRA; --controlnet-init for the ControlNet's start)")
        for stage in stages:
            if name in routed[stage]:
                raise ConfigError(f"{stage} setting {name} is given twice (as --{name} and --{stage}-{name})")
            routed[stage][name] = value
    return routed


def stage_configs(base: str, out: Path, subsets: list[Subset], defaults: dict[str, dict[str, Any]],
                  lora_config: Path | None, controlnet_config: Path | None, lora_steps: int | None,
                  controlnet_steps: int | None, controlnet_init: str | None,
                  overrides: dict[str, Any]) -> dict[str, dict[str, TrainConfig | None]]:
    """Each run's resolved LoRA and ControlNet config (None: no ControlNet), checked before any training."""
    settings = stage_settings(defaults, lora_config, controlnet_config, lora_steps, controlnet_steps, overrides)
    configs: dict[str, dict[str, TrainConfig | None]] = {}
    for subset in subsets:
        data, run = str((out / "subsets" / subset.name).resolve()), (out / "runs" / subset.name).resolve()
        per_run = {"lora": {"data": data, "base": base},
                   "controlnet": {"data": data, "base": base, "lora": str(run / "lora"),
                                  "init": None if controlnet_init is None else _base_folder(controlnet_init)}}
        # init None too: a YAML's init never leaks into the ablation
        configs[subset.name] = {stage: None if config is None else replace(config, **per_run[stage])
                                for stage, config in settings.items()}
    return configs


def stage_settings(defaults: dict[str, dict[str, Any]], lora_config: Path | None, controlnet_config: Path | None,
                   lora_steps: int | None, controlnet_steps: int | None,
                   overrides: dict[str, Any]) -> dict[str, TrainConfig | None]:
    """Each stage's config before the run's folders are set (None: no ControlNet); every run trains with it."""
    routed = route_overrides(overrides)
    files = {"lora": lora_config, "controlnet": controlnet_config}
    chosen_steps = {"lora": lora_steps, "controlnet": controlnet_steps}
    if lora_steps is not None and lora_steps < 1:
        raise AblationError(f"--lora-steps must be at least 1, got {lora_steps}")
    if controlnet_steps is not None and controlnet_steps < 0:
        raise AblationError(f"--controlnet-steps must be at least 0 (0: no ControlNet), got {controlnet_steps}")
    return {stage: None if stage == "controlnet" and controlnet_steps == 0 else
            _stage_config(TRAINERS[stage], files[stage], defaults[stage], routed[stage], chosen_steps[stage])
            for stage in TRAINERS}


def _stage_config(cls: type[TrainConfig], path: Path | None, defaults: dict[str, Any], overrides: dict[str, Any],
                  steps: int | None) -> TrainConfig:
    """Defaults (or the YAML file) < command-line settings < this stage's steps; the run's folders come later."""
    if steps is not None:
        overrides = {**overrides, "max_steps": steps}
    values = read_yaml(cls, Path(path)) if path is not None else defaults
    explicit = {name: value for name, value in values.items() if name not in overrides and name not in SET_PER_RUN}
    return resolve_config(cls, None, overrides, **explicit)


def _eval_options(split: str, limit: int | None, steps: int, seed: int, guidance_scale: float | None,
                  clip_model: str, inception_weights: Path | None) -> EvalOptions:
    """The evaluation's settings, checked as `fsdx evaluate` checks them (here before training, not after)."""
    from fashionsd_x.generate import check_settings

    check_settings(steps=steps, seed=seed, guidance_scale=guidance_scale)
    if limit is not None and limit < 1:
        raise AblationError(f"--limit must be at least 1, got {limit}")
    return EvalOptions(split, limit, steps, seed, guidance_scale, clip_model,
                       None if inception_weights is None else str(inception_weights))


def _variants(text: str | None, no_training: bool, init: str | None) -> list[str]:
    """The variants to evaluate; fashionsd-x needs a ControlNet: trained per run, or --controlnet-init as it is."""
    if no_training and init is not None and not Path(init).is_dir():
        raise AblationError(f"--controlnet-init {init} is no local folder; with --controlnet-steps 0 the ablation "
                            "evaluates it as it is, which needs a ControlNet folder")
    no_controlnet = no_training and init is None
    if text is None:
        return [name for name in VARIANTS if not (no_controlnet and name == "fashionsd-x")]
    chosen = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown or not chosen:
        raise AblationError(f"unknown variant(s) {unknown or text!r} in --variants; choose from {', '.join(VARIANTS)}")
    if no_controlnet and "fashionsd-x" in chosen:
        raise AblationError("--variants fashionsd-x needs a ControlNet: --controlnet-steps above 0, or "
                            "--controlnet-init to use as it is")
    return chosen


def write_subset(source: Any, data: Path, subset: Subset, folder: Path, seed: int) -> Path:
    """SUBSET as a dataset folder like `fsdx data build`'s: its train rows, every other split as it is, and a
    build_report.json that says what it was cut from (kept when it says the same, else cut again)."""
    from datasets import DatasetDict

    from fashionsd_x.data.build import REPORT_NAME

    wanted = {"of": str(data), "of_sha256": path_sha256(data), "seed": seed, "fraction": subset.fraction,
              "categories": None if subset.categories is None else list(subset.categories),
              "indices_sha256": combine([("indices", json.dumps(list(subset.indices)))])}
    report_file = folder / REPORT_NAME
    if report_file.is_file() and _read_json(report_file).get(SUBSET_KEY) == wanted:
        return folder
    parts = DatasetDict({name: part.select(subset.indices) if name == "train" else part
                         for name, part in source.items()})
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    parts.save_to_disk(str(temporary))
    report = _read_json(data / REPORT_NAME) if (data / REPORT_NAME).is_file() else {}
    report.update(num_rows={name: part.num_rows for name, part in parts.items()},
                  counts={name: _counts(part["category"]) if "category" in part.column_names else {}
                          for name, part in parts.items()}, **{SUBSET_KEY: wanted})
    (temporary / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)
    return folder


def _counts(values: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def run_one(out: Path, data: Path, base: str, subset: Subset, configs: dict[str, TrainConfig | None],
            controlnet_init: str | None, chosen: list[str], options: EvalOptions,
            num_processes: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train (or reuse) one run's LoRA and ControlNet, evaluate (or reuse) it: its ablation.json entry and its
    evaluation's metrics.json (None when only vanilla is evaluated)."""
    from fashionsd_x.train.controlnet import train_controlnet
    from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora

    run, subset_folder = out / "runs" / subset.name, out / "subsets" / subset.name
    inputs = {"base": model_sha256(base), "data": path_sha256(subset_folder)}
    lora = _train_stage(run / "lora", configs["lora"], inputs, lambda settings: train_lora(
        subset_folder, base, run / "lora", num_processes=num_processes, **settings))
    controlnet_config, controlnet = configs["controlnet"], None
    if controlnet_config is not None:
        lora_digest = path_sha256(run / "lora" / LORA_WEIGHTS)
        controlnet = _train_stage(run / "controlnet", controlnet_config, {**inputs, "lora": lora_digest},
                                  lambda settings: train_controlnet(subset_folder, base, run / "controlnet",
                                                                    num_processes=num_processes, **settings))
    # Without ControlNet training, the fashionsd-x variant uses --controlnet-init as it is (a local folder).
    controlnet_folder = run / "controlnet" if controlnet is not None else _local(controlnet_init)
    run_variants = ",".join(name for name in chosen if name != "vanilla")
    metrics = _evaluate(run / "eval", data, base, run / "lora", controlnet_folder, run_variants, options) \
        if run_variants else None
    entry = {"name": subset.name, "kind": "fraction" if subset.fraction is not None else "categories",
            "fraction": subset.fraction, "size": len(subset.indices),
            "categories": None if subset.categories is None else list(subset.categories),
            "data_sha256": inputs["data"],
            "settings_sha256": {stage: _settings_digest(config) for stage, config in configs.items() if config},
            "weights_sha256": {"lora": path_sha256(run / "lora" / LORA_WEIGHTS),
                               **({"controlnet": path_sha256(controlnet_folder)} if controlnet_folder else {})},
            "controlnet": None if controlnet_folder is None else str(controlnet_folder),
            "steps": {"lora": lora["steps"], **({"controlnet": controlnet["steps"]} if controlnet else {})},
            "train_seconds": {"lora": lora["seconds"], **({"controlnet": controlnet["seconds"]} if controlnet else {})},
            "metrics": {} if metrics is None else metrics["variants"]}
    return entry, metrics


def _local(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _settings(config: TrainConfig) -> dict[str, Any]:
    """A resolved config as the trainer's keyword settings (data and base are passed on their own)."""
    return {item.name: getattr(config, item.name) for item in fields(config) if item.name not in ("data", "base")}


def _settings_digest(config: TrainConfig) -> str:
    """The settings that determine a run's weights (not how it is watched or stored: OBSERVING)."""
    kept = {name: value for name, value in config.to_dict().items()
            if name not in OBSERVING and name not in ("data", "base", "lora")}  # their content is in the inputs
    return combine([("settings", json.dumps(kept, sort_keys=True, default=str))])


def _train_stage(folder: Path, config: TrainConfig, inputs: dict[str, str],
                 train: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Train unless FOLDER finished these steps from these inputs and settings; its train_result.json either way.

    FOLDER/recipe_inputs.json records the inputs' and settings' digests when training starts; a folder made
    from others is moved to FOLDER.stale (its checkpoints belong to other settings) and trained anew.
    """
    wanted = {**inputs, "settings": _settings_digest(config)}
    _set_aside_if_changed(folder, wanted)
    result = folder / RESULT_NAME
    steps = config.max_steps
    if result.is_file() and (steps is None or _read_json(result)["steps"] >= steps):
        return _read_json(result)
    _write_json(folder / INPUTS_NAME, wanted)
    # resume latest only where there are checkpoints: the trainers say "starting a new run" otherwise.
    resume = "latest" if (folder / "checkpoints").is_dir() else None
    train({**_settings(config), "resume": resume})
    return _read_json(result)


def _set_aside_if_changed(folder: Path, wanted: dict[str, Any]) -> None:
    recorded = folder / INPUTS_NAME
    if folder.exists() and (not recorded.is_file() or _read_json(recorded) != wanted):
        stale = folder.with_name(f"{folder.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        folder.rename(stale)
        print(f"{folder}: made from other data, weights or settings; moved to {stale.name} and made again")


def _evaluate(folder: Path, data: Path, base: str, lora: Path | None, controlnet: Path | None, variants: str,
              options: EvalOptions) -> dict[str, Any]:
    """`fsdx evaluate` of these weights into FOLDER, unless its metrics.json came from the same ones."""
    from fashionsd_x.evaluate.protocol import evaluate

    wanted = {"base": model_sha256(base), "data": path_sha256(data), "variants": variants, **asdict(options),
              "lora": None if lora is None else path_sha256(lora / "pytorch_lora_weights.safetensors"),
              "controlnet": None if controlnet is None else path_sha256(controlnet)}
    recorded, metrics = folder / INPUTS_NAME, folder / "metrics.json"
    if metrics.is_file() and recorded.is_file() and _read_json(recorded) == wanted:
        return _read_json(metrics)
    recorded.unlink(missing_ok=True)  # evaluate reuses only images of these weights (content-addressed keys)
    evaluate(data, base, folder, lora=lora, controlnet=controlnet, split=options.split, variants=variants,
             limit=options.limit, steps=options.steps, seed=options.seed, guidance_scale=options.guidance_scale,
             clip_model=options.clip_model,
             inception_weights=None if options.inception_weights is None else Path(options.inception_weights))
    _write_json(recorded, wanted)
    return _read_json(metrics)


def write_outputs(out: Path, record: dict[str, Any]) -> None:
    """ablation.json, ablation.md and ablation.png in OUT."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RECORD_JSON, record)
    (out / RECORD_MD).write_text(ablation_table(record), encoding="utf-8")
    draw_curves(record, out / RECORD_PNG)


def _metric_names(record: dict[str, Any]) -> list[str]:
    tables = [record["vanilla"] or {}, *(scores for run in record["runs"] for scores in run["metrics"].values())]
    present = {metric for table in tables for metric in table}
    return [metric for metric in METRICS if metric in present]


def ablation_table(record: dict[str, Any]) -> str:
    """One row per run and variant (vanilla once), metrics as columns with the better direction marked."""
    names = _metric_names(record)
    header = ["run", "train rows", "categories", "variant"] + [
        f"{METRICS[name][0]} {'↑' if METRICS[name][1] else '↓'}" for name in names]
    rows = [["base alone", "0", "", "vanilla", *(_number(record["vanilla"], name) for name in names)]] \
        if record["vanilla"] else []
    for run in record["runs"]:
        groups = ", ".join(run["categories"]) if run["categories"] else f"all {len(run['category_counts'])}"
        for variant, scores in run["metrics"].items():
            rows.append([run["name"], str(run["size"]), groups, variant, *(_number(scores, name) for name in names)])
    evaluation = record["evaluation"]
    lines = [f"# Data ablation ({record['train_rows']} train rows of {record['data']})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(row) + " |" for row in rows), "",
             (f"Evaluated on split {evaluation['split']}{_first(evaluation['limit'])}, {evaluation['steps']} steps, "
              f"guidance {evaluation['guidance_scale']}, seed {evaluation['seed']}; base {record['model']}; subsets "
              f"from seed {record['subset_seed']}.")]
    if record["unavailable"]:
        lines += ["", "Unavailable metrics:", *(f"- {name}: {why}" for name, why in record["unavailable"].items())]
    return "\n".join(lines) + "\n"


def _first(limit: int | None) -> str:
    return "" if limit is None else f" (its first {limit} items)"


def _number(scores: dict[str, float] | None, name: str) -> str:
    value = (scores or {}).get(name)
    return "n/a" if value is None else f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def draw_curves(record: dict[str, Any], path: Path) -> Path:
    """A panel per metric: its value against training-set size, a line per variant over the fraction runs,
    category runs as open markers at their size, vanilla as a dashed level."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (renders with Agg)

    names = _metric_names(record) or ["none"]
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = {"vanilla": "#888888", "lora": "#e0a458", "fashionsd-x": "#7a3e9d"}
    for axis, name in zip(axes, names):
        _draw_metric(axis, record, name, colours)
    for axis in axes[len(names):]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)
    figure.savefig(path, dpi=110)
    return path


def _draw_metric(axis: Any, record: dict[str, Any], name: str, colours: dict[str, str]) -> None:
    label, higher = METRICS.get(name, (name, True))
    fraction_runs = sorted((run for run in record["runs"] if run["kind"] == "fraction"), key=lambda run: run["size"])
    for variant in [v for v in VARIANTS if v != "vanilla"]:
        points = [(run["size"], run["metrics"][variant][name]) for run in fraction_runs
                  if name in run["metrics"].get(variant, {})]
        if points:
            axis.plot(*zip(*points), marker="o", color=colours[variant], label=variant)
        for run in record["runs"]:
            if run["kind"] == "categories" and name in run["metrics"].get(variant, {}):
                axis.plot(run["size"], run["metrics"][variant][name], marker="s", markerfacecolor="none",
                          color=colours[variant], label=f"{variant}, fewer categories")
    if record["vanilla"] and name in record["vanilla"]:
        axis.axhline(record["vanilla"][name], color=colours["vanilla"], linestyle="--", label="vanilla")
    axis.set_xscale("log", base=2)  # sizes usually double from run to run; ticks name them
    sizes = sorted({run["size"] for run in record["runs"]})
    axis.set_xticks(sizes, [str(size) for size in sizes])
    axis.minorticks_off()
    axis.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    axis.set_xlabel("training rows", fontsize=8)
    axis.tick_params(labelsize=7)


def show(result: AblationResult) -> int:
    """The CLI's report of a finished ablation: the table and where the files are."""
    print((result.out / RECORD_MD).read_text(encoding="utf-8"))
    print(f"wrote {result.out / RECORD_JSON}, {result.out / RECORD_MD} and {result.out / RECORD_PNG}")
    return 0


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


__all__ = ["AblationError", "AblationResult", "Subset", "ablate", "plan_subsets", "route_overrides", "show"]

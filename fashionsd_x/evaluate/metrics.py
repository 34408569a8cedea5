"""Image metrics: each compares generated garments with references, one number (or a few) per call.

The paper's (Singh and Patras, arXiv 2404.18591):
    fid_kid       FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on Inception-v3 pool features,
                  computed by torchmetrics from features extracted once per image.
    clip_scores   CLIPScore (Hessel et al. 2021): 100 * max(cos(image, text), 0) per pair.
    ssim          SSIM (Wang et al. 2004) against the ground-truth garment, Gaussian window 11, sigma 1.5.
    sketch_mse    sketch similarity: MSE between the sketch extracted from a generated image (with the
                  project's one extractor and the dataset's SketchConfig) and the input sketch.
Beyond the paper:
    edge_prf          line precision/recall/F1 with a pixel tolerance (the BSDS boundary-matching idea).
    chamfer_distance  symmetric mean distance between two sketches' lines, as a fraction of the image diagonal.
    silhouette_iou    generated garment region vs the region inside the input sketch's outer outline.
    mask_iou          generated garment region vs a known silhouette mask (the sketch-style benchmark's).
    color_accuracy    dominant garment colour named by the nearest palette colour (CIEDE2000).

Weights are never downloaded here: Inception and CLIP come from a local file or folder (or a cache hit),
otherwise MetricUnavailable says which flag to pass, and the caller reports that metric as unavailable.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage.color import deltaE_ciede2000, rgb2lab

from fashionsd_x.data.conditioning import BlankSketchError, ink_mask
from fashionsd_x.data.images import to_rgb
from fashionsd_x.data.regions import BACKGROUND_THRESHOLD, garment_mask, largest_component
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.data.synth import PALETTE

INCEPTION_FLAG = "--inception-weights"  # the CLI flag named in MetricUnavailable messages
CLIP_FLAG = "--clip-model"
# torchmetrics downloads torch-fidelity's file. pytorch-fid's is a conversion of the same TF graph (same hash
# in the name) with the same torchvision-Inception3 key names, so it loads too; a file that does not fit the
# network is refused with a one-line reason.
TORCH_FIDELITY_INCEPTION = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_INCEPTION = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FILE_NAMES = (TORCH_FIDELITY_INCEPTION, PYTORCH_FID_INCEPTION)
INCEPTION_FEATURES = "2048"  # the pool3 layer every published FID uses
KID_MAX_SUBSET = 1000  # torchmetrics' and torch-fidelity's default KID subset size, shrunk for smaller sets
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5
OUTLINE_GAP_RADIUS = 2  # px: sketch_region bridges outline breaks up to twice this (any image size)


class MetricUnavailable(ValueError):
    """A metric cannot be computed here (weights missing, no network); str() is a one-line reason."""


# ---------------------------------------------------------------------------------------------- FID / KID


def find_inception_weights(path: Path | str | None = None) -> Path:
    """The Inception-v3 FID weights file: PATH if given, else a file torch hub already cached; never downloads.

    The cache is TORCH_HOME's hub/checkpoints, where torchmetrics (torch-fidelity) and pytorch-fid save it.
    """
    hint = f"pass {INCEPTION_FLAG} PATH to {TORCH_FIDELITY_INCEPTION} (or pytorch-fid's {PYTORCH_FID_INCEPTION})"
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"FID/KID unavailable: Inception weights file {path} does not exist; {hint}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_FILE_NAMES:
        if (cache / name).is_file():
            return cache / name
    raise MetricUnavailable(f"FID/KID unavailable: Inception weights not found locally (none in {cache}; "
                            f"no download is attempted); {hint}")


def load_inception(path: Path) -> torch.nn.Module:
    """torchmetrics' FID Inception-v3 (torch-fidelity's TF-exact port) with pool3 (2048) output, from PATH.

    torch-fidelity unpickles its weights file with weights_only=False, so PATH is read here weights-only (or as
    safetensors) and only the resulting tensors, re-saved to a private temporary file, reach it.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3  # torchmetrics' image stack is slow to import

    state = _read_state_dict(Path(path))
    with tempfile.TemporaryDirectory() as folder:
        checked = Path(folder) / "inception.pth"
        torch.save(state, checked)
        try:
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=[INCEPTION_FEATURES],
                                      feature_extractor_weights_path=str(checked))
        except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped keys
            raise MetricUnavailable(f"FID/KID unavailable: {path} is not an Inception-v3 FID weights file "
                                    f"({_one_line(error)[:200]})") from error


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
    except Exception as error:  # zip, pickle, safetensors or refused-global errors all mean "not usable"
        raise MetricUnavailable(f"FID/KID unavailable: {path} is not a readable weights-only state dict "
                                f"({_one_line(error)[:200]})") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise MetricUnavailable(f"FID/KID unavailable: {path} holds no state dict of tensors")
    return state


def inception_features(images: Sequence[Image.Image], extractor: torch.nn.Module, batch_size: int = 32) -> torch.Tensor:
    """(N, d) float64 features of IMAGES, in order. EXTRACTOR takes uint8 (B, 3, H, W), as torchmetrics' does.

    Features are computed once per image so that FID and KID (and several comparisons against the same real
    set) reuse them; the extractor resizes to its own input size, so images of any size may be mixed.
    """
    device = next(extractor.parameters(), torch.empty(0)).device
    rows = []
    with torch.inference_mode():
        for batch in _uint8_batches(images, batch_size):
            output = extractor(batch.to(device))
            output = output[0] if isinstance(output, (tuple, list)) else output  # raw torch-fidelity gives a tuple
            rows.append(output.reshape(len(batch), -1).double().cpu())
    return torch.cat(rows)


def _uint8_batches(images: Sequence[Image.Image], batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive images of one size, at most BATCH_SIZE at a time, as uint8 (B, 3, H, W)."""
    batch: list[np.ndarray] = []
    for image in images:
        array = np.asarray(to_rgb(image))
        if batch and (len(batch) == batch_size or array.shape != batch[0].shape):
            yield _channels_first(batch)
            batch = []
        batch.append(array)
    if batch:
        yield _channels_first(batch)


def _channels_first(arrays: list[np.ndarray]) -> torch.Tensor:
    # contiguous: a permuted (channels-last) view takes other convolution kernels, which round differently
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def kid_subset_size(num_real: int, num_fake: int) -> int:
    """KID's subset size: 1000 (torchmetrics' and torch-fidelity's default), or the smaller set's size."""
    return min(KID_MAX_SUBSET, num_real, num_fake)


def fid_kid_from_features(real: torch.Tensor, fake: torch.Tensor, kid_subset: int | None = None,
                          kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """{"fid", "kid_mean", "kid_std"} of two (N, d) feature sets, by torchmetrics' FID and KID.

    KID draws KID_SUBSETS random subsets of KID_SUBSET (default: kid_subset_size) from each set; SEED makes
    the draw reproducible without touching the global torch RNG.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = _check_feature_sets(real, fake, kid_subset)
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    with warnings.catch_warnings():  # "KID will save all extracted features": expected, they are passed in
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=kid_subsets, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID subsets come from torch.randperm on the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def _check_feature_sets(real: torch.Tensor, fake: torch.Tensor, kid_subset: int | None) -> int:
    """The KID subset size to use; raises when the sets cannot give a FID or KID."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        # A covariance needs two samples; torchmetrics would fail later with a less helpful message.
        raise ValueError(f"FID and KID need at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    subset = kid_subset_size(len(real), len(fake)) if kid_subset is None else kid_subset
    if not 2 <= subset <= min(len(real), len(fake)):
        raise ValueError(f"kid_subset_size must be between 2 and the smaller set's size "
                         f"({min(len(real), len(fake))}), got {subset}")
    return subset


class _Precomputed(torch.nn.Module):
    """Identity "feature extractor": torchmetrics' FID/KID statistics on features computed beforehand."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # torchmetrics reads this instead of probing with a dummy image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: Sequence[Image.Image], fake: Sequence[Image.Image], weights_path: Path | str | None = None,
            feature_extractor: torch.nn.Module | None = None, kid_subset_size: int | None = None) -> dict[str, float]:
    """FID and KID between REAL and FAKE images: {"fid", "kid_mean", "kid_std"}.

    Features come from FEATURE_EXTRACTOR if given, else from the Inception-v3 weights at WEIGHTS_PATH (or in
    the torch hub cache); with neither, MetricUnavailable is raised before any image is processed.
    """
    if len(real) < 2 or len(fake) < 2:  # checked again on the features; here before loading 100 MB of weights
        raise ValueError(f"FID and KID need at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    extractor = feature_extractor
    if extractor is None:
        extractor = load_inception(find_inception_weights(weights_path))
    return fid_kid_from_features(inception_features(real, extractor), inception_features(fake, extractor),
                                 kid_subset_size)


# ---------------------------------------------------------------------------------------------- CLIP score


class Clip(NamedTuple):
    """A CLIP model and the processor that prepares its inputs; unpacks as (model, processor)."""

    model: torch.nn.Module  # transformers CLIPModel
    processor: object  # transformers CLIPProcessor


def load_clip(id_or_path: str | Path = DEFAULT_CLIP, download: bool = False, cache_dir: Path | None = None) -> Clip:
    """CLIP from a local folder or a Hub id already in the cache (CACHE_DIR or the Hugging Face default).

    Local-only unless DOWNLOAD, so an offline machine fails at once instead of waiting on network timeouts.
    """
    from transformers import CLIPModel, CLIPProcessor

    options = {"local_files_only": not download, "cache_dir": cache_dir}
    try:
        model = CLIPModel.from_pretrained(str(id_or_path), **options)
        processor = CLIPProcessor.from_pretrained(str(id_or_path), **options)
    except (OSError, ValueError) as error:  # missing files, not cached, offline, malformed id
        raise MetricUnavailable(f"CLIP score unavailable: CLIP model {str(id_or_path)!r} could not be loaded "
                                f"locally ({_one_line(error)[:200]}); pass {CLIP_FLAG} PATH to a downloaded "
                                f"CLIP folder (e.g. {DEFAULT_CLIP})") from error
    return Clip(model.eval(), processor)


def clip_scores(images: Sequence[Image.Image], texts: Sequence[str], clip: Clip, batch_size: int = 32) -> list[float]:
    """CLIPScore (Hessel et al. 2021, as torchmetrics defines it) of each (image, text) pair: 100 * max(cos, 0).

    Texts longer than CLIP's context (77 tokens) are truncated, keeping the end-of-text token CLIP pools on.
    """
    if len(images) != len(texts):
        raise ValueError(f"need one text per image, got {len(images)} images and {len(texts)} texts")
    scores: list[float] = []
    for start in range(0, len(images), batch_size):
        image_embeds, text_embeds = _clip_embeddings(images[start:start + batch_size],
                                                     list(texts[start:start + batch_size]), clip)
        cosine = (image_embeds * text_embeds).sum(dim=-1)
        scores += (100 * cosine).clamp(min=0).tolist()
    return scores


def _clip_embeddings(images: Sequence[Image.Image], texts: list[str], clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length (B, d) image and text embeddings."""
    model, processor = clip
    parameter = next(model.parameters())
    pixels = processor(images=[to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]
    tokens = processor(text=texts, return_tensors="pt", padding=True, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings)
    with torch.inference_mode():
        image = _pooled(model.get_image_features(pixel_values=pixels.to(parameter.device, parameter.dtype)))
        text = _pooled(model.get_text_features(input_ids=tokens["input_ids"].to(parameter.device),
                                               attention_mask=tokens["attention_mask"].to(parameter.device)))
    image, text = image.double(), text.double()
    return image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)


def _pooled(output: torch.Tensor | object) -> torch.Tensor:
    # transformers 5 returns the projected embedding as .pooler_output of a model output, 4.x a bare tensor
    # (torchmetrics 1.9's CLIPScore breaks on the former: Lightning-AI/torchmetrics#3407).
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ---------------------------------------------------------------------------------------------- SSIM


def ssim(a: Image.Image, b: Image.Image) -> float:
    """SSIM (Wang et al. 2004) of two RGB images of one size, in [0, 1] scale, Gaussian window 11, sigma 1.5.

    The SSIM map is torchmetrics' (structural_similarity_index_measure, K1 0.01, K2 0.03, per channel), averaged
    over the pixels whose whole window lies inside the image, as Wang et al.'s code and scikit-image do.
    torchmetrics 1.9 averages the reflect-padded border too, which moved SSIM by up to 0.14 at 96 px in tests.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.size != b.size:
        raise ValueError(f"SSIM needs images of the same size, got {a.size} and {b.size}; resize one first")
    if min(a.size) <= SSIM_KERNEL:
        raise ValueError(f"SSIM needs images larger than its {SSIM_KERNEL} px window, got {a.size}")
    _, full = structural_similarity_index_measure(_unit_tensor(a), _unit_tensor(b), gaussian_kernel=True,
                                                  sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL, data_range=1.0,
                                                  return_full_image=True)
    border = SSIM_KERNEL // 2
    return float(full[..., border:-border, border:-border].mean())


def _unit_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float64 in [0, 1]: float64 so the result does not depend on summation order."""
    return torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float64) / 255.0).permute(2, 0, 1)[None]


# ---------------------------------------------------------------------------------------------- sketches


def sketch_mse(generated: Image.Image, input_sketch: Image.Image, config: SketchConfig | None = None) -> float:
    """The paper's sketch similarity: MSE in [0, 1] between the sketch of GENERATED and INPUT_SKETCH.

    The sketch is extracted with the same function and CONFIG that made the input sketches. A generated image
    of another size is resized to the input sketch's size first, so lines are extracted at the input's scale
    (the extractor's block size and speckle area are in pixels).
    """
    if generated.size != input_sketch.size:
        generated = to_rgb(generated).resize(input_sketch.size, Image.Resampling.LANCZOS)
    return sketch_pixel_mse(extract_sketch(generated, config or SketchConfig()), input_sketch)


def sketch_pixel_mse(a: Image.Image, b: Image.Image) -> float:
    """Mean squared difference of two sketches' gray values scaled to [0, 1]: 0 identical, 1 blank vs full."""
    if a.size != b.size:
        raise ValueError(f"sketches must have the same size, got {a.size} and {b.size}")
    return float(np.mean((_gray01(a) - _gray01(b)) ** 2))


def _gray01(image: Image.Image) -> np.ndarray:
    gray = image if image.mode == "L" else to_rgb(image).convert("L")
    return np.asarray(gray, dtype=np.float64) / 255.0


def line_mask(sketch: Image.Image, invert: bool = False) -> np.ndarray:
    """Bool (H, W): the sketch's line pixels; lines are dark on white unless INVERT (white on black)."""
    dark = _gray01(sketch) < 0.5
    return ~dark if invert else dark


def edge_prf(generated_sketch: Image.Image, input_sketch: Image.Image, tolerance: int = 2,
             invert: bool = False) -> dict[str, float]:
    """Line precision, recall and F1 with a TOLERANCE in pixels (boundary matching as in the BSDS benchmark,
    Martin et al. 2004, with a distance threshold instead of a one-to-one assignment).

    precision: share of generated line pixels within TOLERANCE (Euclidean) of an input line pixel.
    recall: share of input line pixels within TOLERANCE of a generated line pixel.
    Empty cases: both sketches blank -> 1, 1, 1. No generated lines for a drawn sketch -> precision 0 and
    recall 0: a blank image follows no sketch, so no score may reward it (a precision of 1 would let a model that
    draws nothing top the precision column). No input lines -> recall 1 (nothing to recover), precision 0.
    F1 is 0 when either is 0.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative integer (pixels), got {tolerance!r}")
    drawn, target = line_mask(generated_sketch, invert), line_mask(input_sketch, invert)
    if drawn.shape != target.shape:
        raise ValueError(f"sketches must have the same size, got {generated_sketch.size} and {input_sketch.size}")
    if not drawn.any() and not target.any():
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = _share_near(drawn, target, tolerance) if drawn.any() else 0.0
    recall = _share_near(target, drawn, tolerance) if target.any() else 1.0
    f1 = 0.0 if precision == 0 or recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def _share_near(points: np.ndarray, lines: np.ndarray, tolerance: int) -> float:
    """Share of POINTS pixels at most TOLERANCE px from a LINES pixel (0 when LINES is empty)."""
    if not lines.any():
        return 0.0
    # distanceTransform measures to the nearest zero pixel, so the lines are the zeros.
    distance = cv2.distanceTransform((~lines).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float((distance[points] <= tolerance + 1e-3).mean())


def chamfer_distance(generated_sketch: Image.Image, input_sketch: Image.Image, invert: bool = False) -> float:
    """Symmetric Chamfer distance between two sketches' lines (Barrow et al. 1977), in [0, 1]: lower is closer.

    The mean distance from each generated line pixel to the nearest input line pixel and the mean distance the
    other way, averaged, divided by the image diagonal so that the same drawing scores the same at any
    resolution (a drawing shifted by 10% of a square image's side scores at most about 0.07). Unlike edge_prf it has no
    tolerance: a line 3 px off costs less than one 30 px off, so it also grades sketches that miss the lines.
    Empty cases: both sketches blank -> 0 (nothing asked, nothing drawn). One blank and the other not -> 1,
    the largest value, above any pair of drawings: a distance to no line is undefined, and a blank image
    follows no sketch, so it must never beat one that draws something.
    """
    drawn, target = line_mask(generated_sketch, invert), line_mask(input_sketch, invert)
    if drawn.shape != target.shape:
        raise ValueError(f"sketches must have the same size, got {generated_sketch.size} and {input_sketch.size}")
    if not drawn.any() and not target.any():
        return 0.0
    if not drawn.any() or not target.any():
        return 1.0
    diagonal = math.hypot(*drawn.shape)  # any two pixels are closer than this, so the result stays below 1
    return (_mean_distance(drawn, target) + _mean_distance(target, drawn)) / (2 * diagonal)


def _mean_distance(points: np.ndarray, lines: np.ndarray) -> float:
    """Mean Euclidean distance (px) from each POINTS pixel to the nearest LINES pixel; LINES must not be empty."""
    distance = cv2.distanceTransform((~lines).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(distance[points].mean())


# ---------------------------------------------------------------------------------------------- attributes


def sketch_region(sketch: Image.Image, invert: bool = False) -> np.ndarray:
    """Bool (H, W): the area enclosed by the sketch's outer outline (lines included), its largest piece.

    Everything the paper cannot reach from the image border without crossing a line is inside. A break in the
    outline would let the outside in, and adaptive thresholding breaks it where a dark print touches the edge
    of light cloth (the edge is then no darker than its neighbourhood), so breaks of up to 4 px are bridged
    first (a closing of radius OUTLINE_GAP_RADIUS); at 64 px that lifts the worst self-IoU of synthetic
    garments from 0.25 to 0.94.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * OUTLINE_GAP_RADIUS + 1,) * 2)
    lines = cv2.morphologyEx(line_mask(sketch, invert).astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    return largest_component(ndimage.binary_fill_holes(lines.astype(bool)))


def silhouette_iou(generated: Image.Image, input_sketch: Image.Image, threshold: int = BACKGROUND_THRESHOLD,
                   invert: bool = False) -> float:
    """IoU of the generated garment (garment_mask) and the region inside the input sketch's outer outline.

    GENERATED is resized to the sketch's size first. Both regions empty -> 1.0 (nothing asked, nothing drawn).
    """
    if generated.size != input_sketch.size:
        generated = to_rgb(generated).resize(input_sketch.size, Image.Resampling.LANCZOS)
    garment, outline = garment_mask(generated, threshold), sketch_region(input_sketch, invert)
    union = (garment | outline).sum()
    return 1.0 if union == 0 else float((garment & outline).sum() / union)


def square_frame(image: Image.Image, side: int, fill: int = 255, mask: bool = False) -> Image.Image:
    """A sketch (or, with MASK, a silhouette) of any size and aspect ratio as grayscale in a generated image's
    SIDE x SIDE frame: resized so its longer side is SIDE and centred on a square of FILL, the geometry of
    data.images.pad_to_square, with which datasets and the generator bring pictures to the model's canvas.
    An image already SIDE x SIDE is returned as it is (in grayscale), so a dataset's own sketches are unchanged.

    A sketch is first read as ink on paper by the generator's own reader (data.conditioning.ink_mask: any paper,
    grain, lighting, a grey pencil, either polarity) and redrawn black on white, so that what the model took
    for a line is a line here too (line_mask reads only pixels darker than mid-grey). Lines must also survive a
    shrink: a 4 px line of a 2048 px sheet is a quarter pixel at 128 px, which averaging would fade to paper,
    so each pixel first takes the darkest value around it (a minimum filter as wide as the shrink factor) and
    the area average then keeps the line black, about 1 px wide. A MASK (255 inside, 0 outside) is resized
    with nearest neighbour instead, so it stays binary.
    """
    gray = image if image.mode == "L" else to_rgb(image).convert("L")
    if gray.size == (side, side):
        return gray
    width, height = gray.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mask:
        resized = cv2.resize(np.asarray(gray), size, interpolation=cv2.INTER_NEAREST)
    else:
        resized = _shrink_lines(_ink_on_white(gray), scale, size)
    canvas = np.full((side, side), fill, np.uint8)
    left, top = (side - size[0]) // 2, (side - size[1]) // 2
    canvas[top:top + size[1], left:left + size[0]] = resized
    return Image.fromarray(canvas, "L")


def _ink_on_white(sketch: Image.Image) -> np.ndarray:
    """uint8: the sketch's ink black (0) on white (255); all white for a blank sheet."""
    try:
        ink = ink_mask(sketch)
    except BlankSketchError:  # nothing drawn: nothing to match, as for an empty dataset sketch
        return np.full((sketch.height, sketch.width), 255, np.uint8)
    return np.where(ink, 0, 255).astype(np.uint8)


def _shrink_lines(lines: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    if scale >= 1:  # a thumbnail enlarged: nearest keeps a 1 px line black instead of smearing it grey
        return cv2.resize(lines, size, interpolation=cv2.INTER_NEAREST)
    reach = math.ceil(1 / scale)
    darkest = cv2.erode(lines, np.ones((reach, reach), np.uint8))  # erosion of white paper = minimum filter
    return cv2.resize(darkest, size, interpolation=cv2.INTER_AREA)


def mask_iou(generated: Image.Image, silhouette: Image.Image, threshold: int = BACKGROUND_THRESHOLD) -> float:
    """IoU of the generated garment (garment_mask) and a known SILHOUETTE (255 inside the garment, 0 outside).

    The silhouette may have any size and aspect ratio (it is the outline of the input sketch, filled); it is
    brought to GENERATED's square frame as the sketch was (square_frame, padded with 0). Both regions empty -> 1.0.
    A perfect garment scores a little under 1 (about 0.93-0.98 at 128 px): garment_mask also counts the faintly
    tinted anti-aliased pixels along the edge, half a pixel outside the silhouette.
    """
    if generated.width != generated.height:
        raise ValueError(f"mask_iou compares in the generator's square frame; got a {generated.size} image")
    garment = garment_mask(generated, threshold)
    target = np.asarray(square_frame(silhouette, generated.width, fill=0, mask=True)) > 127
    union = (garment | target).sum()
    return 1.0 if union == 0 else float((garment & target).sum() / union)


def dominant_color(image: Image.Image, mask: np.ndarray) -> tuple[int, int, int]:
    """The most common colour under MASK: median of the pixels near the densest cell of an RGB histogram.

    A one-step mode seek (8 levels per channel, counts summed over each cell's 3x3x3 neighbourhood), so a
    print covering less than the main colour does not pull the result towards a mix of the two, as a
    per-channel median of all pixels would.
    """
    rgb = np.asarray(to_rgb(image))
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {rgb.shape[:2]}")
    pixels = rgb[mask]
    if len(pixels) == 0:
        raise ValueError("mask selects no pixels; there is no garment to take a colour from")
    cells = pixels // 32
    counts = np.zeros((8, 8, 8))
    np.add.at(counts, tuple(cells.T), 1)
    peak = np.unravel_index(np.argmax(ndimage.uniform_filter(counts, size=3, mode="constant")), counts.shape)
    near = (np.abs(cells.astype(int) - np.array(peak)) <= 1).all(axis=1)
    red, green, blue = np.median(pixels[near], axis=0)
    return int(round(red)), int(round(green)), int(round(blue))


def nearest_palette_color(rgb: tuple[int, int, int], palette: dict[str, tuple[int, int, int]] = PALETTE) -> str:
    """Name of the PALETTE colour perceptually closest to RGB (CIEDE2000 in CIE Lab, D65)."""
    names = list(palette)
    colors = np.array([palette[name] for name in names] + [rgb], dtype=np.float64) / 255.0
    lab = rgb2lab(colors[None])[0]
    return names[int(np.argmin(deltaE_ciede2000(lab[:-1], lab[-1:])))]


def predicted_color(image: Image.Image, threshold: int = BACKGROUND_THRESHOLD,
                    palette: dict[str, tuple[int, int, int]] = PALETTE) -> str | None:
    """The palette name of the garment's dominant colour in IMAGE; None when there is no garment (blank)."""
    mask = garment_mask(image, threshold)
    return nearest_palette_color(dominant_color(image, mask), palette) if mask.any() else None


def color_accuracy(images: Sequence[Image.Image], color_names: Sequence[str], threshold: int = BACKGROUND_THRESHOLD,
                   palette: dict[str, tuple[int, int, int]] = PALETTE) -> float:
    """Share of IMAGES whose predicted_color is the requested name in COLOR_NAMES (a blank image is a miss)."""
    check_labels(images, color_names, tuple(palette), "colour")
    hits = [predicted_color(image, threshold, palette) == name for image, name in zip(images, color_names)]
    return float(np.mean(hits))


def check_labels(images: Sequence[Image.Image], names: Sequence[str], known: Sequence[str], kind: str) -> None:
    """Raise ValueError unless there is one known `kind` name (colour, pattern) per image, and some images."""
    if len(images) != len(names) or not images:
        raise ValueError(f"need one {kind} name per image and at least one image, got {len(images)} images "
                         f"and {len(names)} names")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind} name(s) {unknown}; known: {', '.join(known)}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__

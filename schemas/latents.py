"""The latent shards table: TexTok tokens of every training image, what the DiT trains on.

Columns: key, split, label, class_name, caption, z, and (when written with text, needed by
DiT-T2I) text_emb, text_len.

`z` is `fixed_size_list<fixed_size_list<float16, d>, N>`: N tokens of d channels per row, a
fixed shape, so a column decodes to one numpy `[rows, N, d]` float16 view without copying
(`z_view`). `text_emb` has the shards' type (`list<fixed_size_list<float16, D>>`).

Metadata (`textok.meta`): tokenizer (path), tokenizer_sha256 (of its model.safetensors),
num_tokens, token_dim, image_size, text_mode, has_text, the shards' encoder keys (encoder, D,
max_tokens, compute_dtype, storage_dtype), source (the shard file), split, num_rows, and
`moments`: {count, mean[d], m2[d]} -- per-channel count / mean / sum of squared deviations
of this file's z (float64, from the stored float16 values). `combine_moments` merges the
files' moments (Chan et al.'s parallel update) into the set's per-channel mean and std.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textok.schemas.common import SchemaError, TableSpec, read_meta, register_table
from textok.schemas.shards import TEXT_META_KEYS, text_emb_type

LATENT_META_KEYS = ("tokenizer", "tokenizer_sha256", "num_tokens", "token_dim", "image_size", "text_mode",
                    "has_text", "moments") + TEXT_META_KEYS


def z_type(num_tokens: int, token_dim: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float16(), int(token_dim)), int(num_tokens))


def latents_schema(num_tokens: int, token_dim: int, text_dim: int | None) -> pa.Schema:
    """text_dim None: a latent set without text columns (class-conditional DiT only)."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("class_name", pa.string()),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("z", z_type(num_tokens, token_dim), nullable=False),
    ]
    if text_dim is not None:
        fields += [pa.field("text_emb", text_emb_type(text_dim), nullable=False),
                   pa.field("text_len", pa.int32(), nullable=False)]
    return pa.schema(fields)


def z_column(z: np.ndarray) -> pa.Array:
    """[rows, N, d] float -> the `z` column (float16). Refuses inf/NaN after the cast."""
    z = np.asarray(z)
    if z.ndim != 3:
        raise SchemaError(f"z must be [rows, N, d], got shape {z.shape}")
    rows, n, d = z.shape
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
        flat = np.ascontiguousarray(z, dtype=np.float16).reshape(-1)
    if not np.isfinite(flat).all():
        raise SchemaError("z holds inf/NaN after the cast to float16 (a tokenizer overflow): refusing to store it")
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float16()), d)
    return pa.FixedSizeListArray.from_arrays(inner, n)


def z_view(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The `z` column as numpy float16 `[rows, N, d]`: zero-copy for one chunk, one copy to join chunks."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = []
    for chunk in chunks:
        if chunk.null_count:
            raise SchemaError("z column holds nulls")
        n, d = chunk.type.list_size, chunk.type.value_type.list_size
        inner = chunk.values  # [rows*N] fixed lists, the outer offset not applied
        flat = inner.values.to_numpy(zero_copy_only=True)
        start = (chunk.offset * n + inner.offset) * d
        views.append(flat[start:start + len(chunk) * n * d].reshape(len(chunk), n, d))
    if not views:
        return np.zeros((0, 0, 0), np.float16)
    return views[0] if len(views) == 1 else np.concatenate(views)


def moments(z: np.ndarray) -> dict:
    """Per-channel {count, mean, m2} of z [..., d] (float64)."""
    x = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
    return {"count": int(len(x)), "mean": mean.tolist(), "m2": ((x - mean) ** 2).sum(0).tolist()}


def combine_moments(parts: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge per-file moments -> (mean [d], std [d], count): exact, independent of the file split."""
    count, mean, m2 = 0, None, None
    for p in parts:
        n_b, mean_b, m2_b = int(p["count"]), np.asarray(p["mean"], np.float64), np.asarray(p["m2"], np.float64)
        if n_b == 0:
            continue
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        if mean_b.shape != mean.shape:
            raise SchemaError(f"latent moments of different widths: {mean.shape} vs {mean_b.shape}")
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta ** 2 * count * n_b / total
        count = total
    if mean is None or count < 2:
        raise SchemaError(f"latent statistics need at least 2 token values per channel, got {count}")
    return mean, np.sqrt(m2 / (count - 1)), count


def _check_latents(path: str, info: dict, pf: pq.ParquetFile) -> None:
    meta = info["meta"]
    n, d = int(meta["num_tokens"]), int(meta["token_dim"])
    got = pf.schema_arrow.field("z").type
    if not got.equals(z_type(n, d)):
        raise SchemaError(f"{path}: column 'z' has type {got}, expected {z_type(n, d)} "
                          f"(metadata num_tokens={n}, token_dim={d})")
    if meta["has_text"]:
        for name, typ in (("text_emb", text_emb_type(int(meta["D"]))), ("text_len", pa.int32())):
            idx = pf.schema_arrow.get_field_index(name)
            if idx < 0 or not pf.schema_arrow.field(idx).type.equals(typ):
                raise SchemaError(f"{path}: metadata has_text=true but column {name!r} is missing or not {typ}")
    m = meta["moments"]
    if len(m.get("mean", [])) != d or len(m.get("m2", [])) != d:
        raise SchemaError(f"{path}: metadata moments must hold {d} per-channel values (token_dim={d})")
    if int(m.get("count", -1)) != pf.metadata.num_rows * n:
        raise SchemaError(f"{path}: metadata moments.count={m.get('count')} != rows x num_tokens = "
                          f"{pf.metadata.num_rows} x {n}")


def read_latent_meta(files: list[str]) -> dict:
    """The meta common to a latent set (first file's) + `mean`/`std`/`count` over all files.

    Refuses files written by different tokenizers or with different shapes or text encoders.
    """
    first, parts = None, []
    for path in files:
        info = read_meta(path)
        if info["table"] != "latents":
            raise SchemaError(f"{path}: metadata textok.table is {info['table']!r}, expected 'latents'")
        meta = info["meta"]
        if first is None:
            first = (path, meta)
        for k in ("tokenizer_sha256", "num_tokens", "token_dim", "encoder", "D", "max_tokens", "has_text"):
            if meta.get(k) != first[1].get(k):
                raise SchemaError(f"{path}: latent metadata {k}={meta.get(k)!r} differs from {first[0]} "
                                  f"({first[1].get(k)!r}); one latent set comes from one tokenizer and encoder")
        parts.append(meta["moments"])
    if first is None:
        raise SchemaError("no latent files given")
    mean, std, count = combine_moments(parts)
    return {**first[1], "mean": mean.tolist(), "std": std.tolist(), "count": count, "num_files": len(files)}


# As for shards, `z` (and the optional text columns) are checked against the file's own
# metadata in `_check_latents`; the registered schema types the fixed columns.
LATENTS = register_table(TableSpec(
    "latents",
    pa.schema([f for f in latents_schema(1, 1, None) if f.name != "z"]),
    required_meta=LATENT_META_KEYS,
    extra_check=_check_latents,
))

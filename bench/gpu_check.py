"""One-call GPU check -> JSON: the figures the project promises, measured on whatever GPU is lent.

    make gpu-check                                   # = python bench/gpu_check.py --out bench/results/gpu_check.json
    python bench/gpu_check.py --only t5_xl_encoder sdpa_text_mask
    python bench/gpu_check.py --smoke                # every section at toy sizes on CPU (checks the code paths)

Sections (each independent: one failing is reported and the others still run; the whole check
stops starting new sections past `--budget-s`, 420 s by default, so it fits in 8 minutes):

- `env`: torch / CUDA / device / memory / bf16 support.
- `nccl`: a single-process NCCL world initialises and all-reduces.
- `sdpa_text_mask`: TexTok-B's attention (12 heads x 64, 1024 patches + 128 image tokens + 128
  text tokens) with the text key-padding mask: which SDPA backends accept the mask (flash /
  efficient / cudnn / math, each forced alone), which kernels the default dispatch runs (from the
  profiler), and the time of forward+backward masked vs mask-free at the same length vs
  mask-free with the text cut to the batch's shortest-bucket length (captions bucketed by length).
- `t5_xl_encoder`: a T5-XL-shaped encoder (google/t5-v1_1-xl's config written out: d_model 2048,
  d_ff 5120, 24 layers, 32 heads x 64, vocab 32128, gated-gelu; random weights, bf16): captions/s
  at 128 tokens (goal >= 1,500 on an H100-class GPU).
- `textok_b_train`: TexTok-B training step at 256 px, patch 8, N = 128, T5-XL text (D 2048):
  images/s and MFU in bf16 autocast (goal >= 45 %), the tokenizer step alone and with the
  discriminator + perceptual loss (bench/train_step.py's `bench`).
- `speed_switches`: the trainer's switches (trainer/training/speed.py) on the TexTok-B step with
  the discriminator (bf16 autocast): step ms eager, with `--channels-last`, and with `--compile`
  (Inductor; its first step, the compilation, is reported apart), and the speed-up of each.
- `dit_xl`: DiT-XL on N = 32 tokens of d = 8: training step time (batch 256, AdamW, bf16
  autocast) and class-conditional sampling images/s (250 DDPM steps, CFG 4.0).
- `local_vlm`: the local VLM captioner path (a tiny random BLIP saved to disk and loaded through
  `from_pretrained`, bf16, batched `generate`): images/s and that every caption came back.

Without CUDA (and without --smoke) it prints a JSON saying so and exits 0: a CPU machine is not
a failure of the check. With CUDA, the exit status is 1 when a section failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import emit  # noqa: E402

# google/t5-v1_1-xl's config.json, written out so no download is needed (weights are random).
T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
             feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
             layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False)
T5_TOY = dict(T5_XL, vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)

# Sizes per mode: "gpu" is the real check, "smoke" the same code at toy sizes on CPU.
SIZES = {
    "gpu": dict(t5=T5_XL, t5_batch=256, t5_tokens=128, t5_iters=10, attn_batch=32, attn_heads=12, attn_head_dim=64,
                attn_image_tokens=1024 + 128, text_tokens=128, attn_iters=20, textok_preset="B", textok_batch=32,
                textok_image=256, textok_steps=10, text_dim=2048, textok_tokens=128, dit_preset="XL", dit_batch=256,
                dit_steps=10, sample_batch=256, sample_steps=250, vlm_images=128, vlm_batch=64, vlm_new_tokens=32),
    "smoke": dict(t5=T5_TOY, t5_batch=4, t5_tokens=16, t5_iters=1, attn_batch=2, attn_heads=2, attn_head_dim=16,
                  attn_image_tokens=24, text_tokens=16, attn_iters=1, textok_preset="tiny", textok_batch=2,
                  textok_image=32, textok_steps=1, text_dim=32, textok_tokens=16, dit_preset="tiny", dit_batch=4,
                  dit_steps=1, sample_batch=2, sample_steps=3, vlm_images=4, vlm_batch=2, vlm_new_tokens=4),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, device: torch.device, warmup: int = 1) -> float:
    """Seconds per call of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


# ----------------------------------------------------------------------------- sections

def check_env(device: torch.device, s: dict) -> dict:
    out = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_GiB=round(p.total_memory / 2 ** 30, 1),
                   multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                   device_count=torch.cuda.device_count())
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_nccl(device: torch.device, s: dict) -> dict:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"  # smoke: the same calls over gloo
    out = {"backend": backend}
    if backend == "nccl":
        version = torch.cuda.nccl.version()
        out["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        torch.cuda.set_device(device.index or 0)
    t0 = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        x = torch.full((1024,), 2.0, device=device)
        dist.all_reduce(x)
        sync(device)
        out.update(initialised=True, all_reduce_ok=bool(torch.all(x == 2.0)),
                   init_and_all_reduce_s=round(time.perf_counter() - t0, 3))
    finally:
        dist.destroy_process_group()
    return out


def _attention_inputs(s: dict, device: torch.device, dtype: torch.dtype, text_tokens: int, masked: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    B, H, Dh = s["attn_batch"], s["attn_heads"], s["attn_head_dim"]
    L = s["attn_image_tokens"] + text_tokens
    q, k, v = (torch.randn(B, H, L, Dh, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    if not masked:
        return q, k, v, None
    lens = torch.randint(max(1, text_tokens // 6), text_tokens + 1, (B,), generator=g)
    text = torch.arange(text_tokens)[None] < lens[:, None]
    keep = torch.ones(B, s["attn_image_tokens"], dtype=torch.bool)
    return q, k, v, torch.cat([keep, text], 1)[:, None, None, :].to(device)  # [B,1,1,L], as TexTok builds it


def _kernels(fn, device: torch.device) -> list[str]:
    """Names of the attention kernels one call of fn() launches (profiler), most frequent first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    keys = ("flash", "fmha", "efficient", "attention", "cudnn", "sdpa", "softmax")
    names = [e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)]
    return names[:8]


def check_sdpa_text_mask(device: torch.device, s: dict) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    T = s["text_tokens"]
    q, k, v, mask = _attention_inputs(s, device, dtype, T, masked=True)
    accepts = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            accepts[name.lower()] = "not in this torch"
            continue
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
            sync(device)
            accepts[name.lower()] = "ok"
        except RuntimeError as e:  # "No available kernel": this backend refuses the mask (or the shape)
            accepts[name.lower()] = "refused: " + str(e).strip().splitlines()[0][:160]
    fused = [n for n in ("flash_attention", "efficient_attention", "cudnn_attention") if accepts.get(n) == "ok"]

    def step(q, k, v, m):
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m).sum().backward()

    masked_fn = step(q, k, v, mask)
    dispatched = _kernels(masked_fn, device)
    t_masked = timed(masked_fn, s["attn_iters"], device)
    same = _attention_inputs(s, device, dtype, T, masked=False)
    t_nomask = timed(step(*same), s["attn_iters"], device)
    bucket = int(mask[:, 0, 0, s["attn_image_tokens"]:].sum(1).float().mean().round())  # a typical caption length
    short = _attention_inputs(s, device, dtype, bucket, masked=False)
    t_bucket = timed(step(*short), s["attn_iters"], device)
    return {"shape": {"batch": s["attn_batch"], "heads": s["attn_heads"], "head_dim": s["attn_head_dim"],
                      "seq_len": s["attn_image_tokens"] + T, "dtype": str(dtype).replace("torch.", "")},
            "backend_accepts_mask": accepts, "fused_kernel_with_mask": bool(fused), "fused_backends_with_mask": fused,
            "kernels_default_dispatch_masked": dispatched,
            # the question of issue 20: with the text mask, does the default dispatch leave the fused kernels?
            "masked_default_falls_back_to_math": any("math" in k.lower() for k in dispatched)
            and not any(f in k.lower() for k in dispatched for f in ("flash", "efficient", "cudnn", "fmha")),
            "kernels_default_dispatch_unmasked": _kernels(step(*same), device),
            "fwd_bwd_ms": {"masked": round(t_masked * 1e3, 3), "mask_free_same_len": round(t_nomask * 1e3, 3),
                           f"mask_free_bucketed_text_{bucket}": round(t_bucket * 1e3, 3)},
            "gain_mask_free_same_len": round(t_masked / t_nomask, 3),
            "gain_mask_free_bucketed": round(t_masked / t_bucket, 3)}


def check_t5_xl_encoder(device: torch.device, s: dict) -> dict:
    from transformers import T5Config, T5EncoderModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # T5 overflows in fp16: never fp16
    cfg = T5Config(**s["t5"])
    torch.manual_seed(0)
    with torch.device(device):
        model = T5EncoderModel(cfg)
    model = model.to(dtype).eval()
    B, L = s["t5_batch"], s["t5_tokens"]
    ids = torch.randint(2, cfg.vocab_size, (B, L), device=device)
    mask = torch.ones(B, L, dtype=torch.long, device=device)

    @torch.inference_mode()
    def forward():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    finite = bool(torch.isfinite(forward()).all())
    dt = timed(forward, s["t5_iters"], device)
    out = {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "dtype": str(dtype)[6:],
           "attn_implementation": getattr(cfg, "_attn_implementation", None), "batch": B, "tokens": L,
           "captions_per_s": round(B / dt, 1), "tokens_per_s": round(B * L / dt), "finite_output": finite,
           "goal_captions_per_s_h100": 1500}
    if device.type == "cuda":
        out["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    del model
    return out


def check_textok_b_train(device: torch.device, s: dict) -> dict:
    from train_step import bench

    common = dict(batch=s["textok_batch"], steps=s["textok_steps"], device=device, image_size=s["textok_image"],
                  text_dim=s["text_dim"], max_tokens=s["text_tokens"], num_tokens=s["textok_tokens"])
    out = {"tokenizer_only": bench(s["textok_preset"], with_disc=False, perceptual="none", **common),
           "goal_mfu": 0.45}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        out["with_discriminator_and_perceptual"] = bench(s["textok_preset"], with_disc=True, perceptual="inception",
                                                         **common)
    return out


def check_speed_switches(device: torch.device, s: dict) -> dict:
    """TexTok train step (+ discriminator) eager / --channels-last / --compile, as the trainer builds it."""
    from train_step import synthetic_batch

    from textok.trainer.training.distributed import Dist
    from textok.trainer.training.optim import build_optimizer, warmup_cosine
    from textok.trainer.training.speed import maybe_compile
    from textok.trainer.training.train_tokenizer import build_model, load_config, start_discriminator, train_step

    data = {k: v.to(device) for k, v in synthetic_batch(s["textok_batch"], s["textok_image"], s["text_dim"],
                                                       s["text_tokens"]).items()}
    dist = Dist(device=device)
    out: dict = {}
    for name, switch in (("eager", {}), ("channels_last", {"channels_last": True}), ("compile", {"compile": True})):
        cfg = load_config(None, shards="-", output="-", preset=s["textok_preset"], image_size=s["textok_image"],
                          patch_size=8, num_tokens=s["textok_tokens"], steps=10_000, batch_size=s["textok_batch"],
                          warmup=0, perceptual="none", disc_start=0, device=str(device),
                          compile_backend="inductor" if device.type == "cuda" else "aot_eager", **switch)
        torch.manual_seed(0)
        model, loss_fn = build_model(cfg, s["text_dim"], s["text_tokens"])
        model.to(device).train()
        loss_fn.to(device)
        opt_d = start_discriminator(loss_fn, cfg, dist)
        opt_g = build_optimizer(model, cfg.lr)
        sched = warmup_cosine(opt_g, 0, cfg.steps)
        stepper = maybe_compile(model, cfg.compile, cfg.compile_backend)
        step = lambda: train_step(data, 1, stepper, model, loss_fn, opt_g, opt_d, sched, cfg, dist)  # noqa: E731
        t0 = time.perf_counter()
        step()  # eager warm-up, or the compilation
        sync(device)
        first = time.perf_counter() - t0
        out[name] = {"step_ms": round(timed(step, s["textok_steps"], device) * 1e3, 2), "first_step_s": round(first, 2)}
        del model, loss_fn, opt_g, opt_d, stepper
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name in ("channels_last", "compile"):
        out[f"{name}_speedup"] = round(out["eager"]["step_ms"] / out[name]["step_ms"], 3)
    return out


def check_dit_xl(device: torch.device, s: dict) -> dict:
    from textok.devices import autocast
    from textok.trainer.models.diffusion import GaussianDiffusion, sample
    from textok.trainer.models.dit import DiT, dit_config

    torch.manual_seed(0)
    model = DiT(dit_config(s["dit_preset"], num_tokens=32, token_dim=8)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    diffusion = GaussianDiffusion.linear()
    B = s["dit_batch"]
    z = torch.randn(B, 32, 8, device=device)
    y = torch.randint(0, 1000, (B,), device=device)

    def train_step():
        with autocast(device):
            loss = diffusion.training_losses(lambda x, t, **kw: model(x, t, **kw).float(), z, {"y": y})["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = timed(train_step, s["dit_steps"], device)
    model.eval()
    n = s["sample_batch"]
    labels = torch.randint(0, 1000, (n,), device=device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        x = sample(model.guided(4.0, y=labels), (n, 32, 8), steps=s["sample_steps"], device=device,
                   generator=torch.Generator(device=device).manual_seed(0))
    sync(device)
    dt = time.perf_counter() - t0
    return {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "num_tokens": 32,
            "train_batch": B, "train_step_s": round(step_s, 4), "train_images_per_s": round(B / step_s, 1),
            "sample_batch": n, "sample_steps": s["sample_steps"], "cfg_scale": 4.0,
            "sample_images_per_s": round(n / dt, 2), "samples_finite": bool(torch.isfinite(x).all())}


def _tiny_blip(path: str) -> str:
    """A 2-layer BLIP with random weights and a word-level processor, saved like a Hub checkpoint."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] [DEC] a picture of red green blue cat dog on the grass sky".split()
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                  tokenizer=tokenizer).save_pretrained(path)
    text = dict(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=128, max_position_embeddings=128, encoder_hidden_size=64,
                bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
                eos_token_id=vocab["[SEP]"])
    vision = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=64,
                  patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=64)) \
        .save_pretrained(path)
    return path


def check_local_vlm(device: torch.device, s: dict) -> dict:
    import numpy as np
    from PIL import Image

    from textok.pipeline.captioning.captioners.base import CaptionRequest
    from textok.pipeline.captioning.captioners.local import from_options

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cap = from_options({"model_id": _tiny_blip(tmp), "task_prompt": "a picture of", "device": str(device),
                            "dtype": "bfloat16", "batch_size": s["vlm_batch"], "max_new_tokens": s["vlm_new_tokens"]})
        cap.setup()
        reqs = [CaptionRequest(key=f"img{i}", image=Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)))
                for i in range(s["vlm_images"])]
        cap.caption_batch(reqs[:s["vlm_batch"]])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        results = cap.caption_batch(reqs)
        sync(device)
        dt = time.perf_counter() - t0
        errors = sorted({r.error_type for r in results if not r.ok})
        return {"model": "tiny random BLIP (bf16)", "images": len(reqs), "batch_size": s["vlm_batch"],
                "images_per_s": round(len(reqs) / dt, 1), "captions_returned": sum(r.ok for r in results),
                "error_types": errors, "model_dtype": str(cap._dtype).replace("torch.", ""),
                "model_device": str(cap._device)}


SECTIONS = {"env": check_env, "nccl": check_nccl, "sdpa_text_mask": check_sdpa_text_mask,
            "t5_xl_encoder": check_t5_xl_encoder, "textok_b_train": check_textok_b_train,
            "speed_switches": check_speed_switches, "dit_xl": check_dit_xl,
            "local_vlm": check_local_vlm}


def run(names: list[str], device: torch.device, sizes: dict, budget_s: float) -> dict:
    start = time.perf_counter()
    sections: dict = {}
    for name in names:
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            sections[name] = {"status": "skipped", "reason": f"time budget {budget_s:.0f} s spent ({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        try:
            result = {"status": "ok", **SECTIONS[name](device, sizes)}
        except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
            result = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:600]}",
                      "where": traceback.format_exc().strip().splitlines()[-3:]}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        sections[name] = result
        print(json.dumps({name: result}), file=sys.stderr, flush=True)  # progress, in case of a kill
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    return sections


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="run every section at toy sizes on CPU")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=None)
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    report: dict = {"check": "gpu_check", "cuda": cuda, "torch": torch.__version__,
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    names = args.only or list(SECTIONS)
    if not cuda and not args.smoke:
        report.update(status="skipped", reason=f"no CUDA device (torch.cuda.is_available() is False; torch "
                                                f"{torch.__version__}, CUDA build {torch.version.cuda}): nothing "
                                                f"measured; run it on a GPU machine, or --smoke for a CPU dry run",
                      sections={n: {"status": "skipped", "reason": "no CUDA"} for n in names})
        code = 0
    else:
        device = torch.device("cuda" if cuda and not args.smoke else "cpu")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        report["mode"] = "smoke (toy sizes)" if args.smoke else "full"
        report["sections"] = run(names, device, SIZES["smoke" if args.smoke else "gpu"], args.budget_s)
        failed = [n for n, r in report["sections"].items() if r["status"] == "error"]
        report["status"] = "failed: " + ", ".join(failed) if failed else "ok"
        code = 1 if failed else 0
    emit(report, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())

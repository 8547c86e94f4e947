"""Loop machinery: DDP gradients == full-batch gradients, EMA, schedule, optimiser groups, checkpoints, RNG."""
from __future__ import annotations

import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from textok.trainer.training.checkpoint import Checkpointer, rng_state, set_rng_state
from textok.trainer.training.optim import EMA, build_optimizer, warmup_cosine
from textok.trainer.training.distributed import Dist, all_reduce_grads, init_distributed, wrap_ddp
from textok.trainer.training.guards import NonFiniteLossError, check_finite


def _tiny_model_and_batch():
    from textok.trainer.models.textok import TexTok, textok_config

    torch.manual_seed(0)
    model = TexTok(textok_config("tiny", text_dim=8, max_text_tokens=4, num_tokens=4))
    disc = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Flatten(), nn.Linear(4 * 16 * 16, 1))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    text = torch.randn(4, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    return model, disc, images, text, mask


def _grads(model, disc, images, text, mask, dist: Dist):
    ddp = wrap_ddp(model, dist)
    recon, _ = ddp(images, text, mask)
    loss = F.mse_loss(recon, images) + disc(recon.detach()).mean()
    loss.backward()
    all_reduce_grads(disc.parameters(), dist)
    return {**{f"g.{n}": p.grad.clone() for n, p in model.named_parameters()},
            **{f"d.{n}": p.grad.clone() for n, p in disc.named_parameters()}}


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    model, disc, images, text, mask = _tiny_model_and_batch()
    half = slice(2 * rank, 2 * rank + 2)  # each rank gets half of the same global batch
    grads = _grads(model, disc, images[half], text[half], mask[half], dist)
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_single_process_full_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    model, disc, images, text, mask = _tiny_model_and_batch()
    full = _grads(model, disc, images, text, mask, Dist())
    for rank in range(2):
        got = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert got.keys() == full.keys()
        for k in full:
            torch.testing.assert_close(got[k], full[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k} rank {rank}: {m}")


def test_init_distributed_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    d = init_distributed("cpu")
    assert (d.rank, d.world_size, d.is_main, d.enabled, d.device.type) == (0, 1, True, False, "cpu")


def test_optimizer_decays_only_matrix_weights():
    model, *_ = _tiny_model_and_batch()
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05)
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    params = dict(model.named_parameters())
    assert id(params["enc_image_tokens"]) in no_decay and id(params["dec_latent_pos"]) in no_decay
    assert id(params["enc_norm.weight"]) in no_decay and id(params["to_latent.bias"]) in no_decay
    assert id(params["to_latent.weight"]) in decay
    assert len(decay) + len(no_decay) == len(params)
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup=4, total=14, min_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lrs[14] == pytest.approx(0.1)


def test_ema_update_swap_and_state():
    lin = nn.Linear(2, 1, bias=False)
    nn.init.ones_(lin.weight)
    ema = EMA(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.2))
    with ema.swapped(lin):
        assert torch.allclose(lin.weight, torch.full((1, 2), 1.2))
    assert torch.allclose(lin.weight, torch.full((1, 2), 3.0))
    other = EMA(lin, decay=0.9)
    other.load_state_dict(ema.state_dict(), num_updates=1)
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"]) and other.num_updates == 1
    # warm-up: decay min(0.9, (1+t)/(10+t)) -> 0.1, 2/11, 3/12, ... then 0.9
    warm = EMA(lin, decay=0.9, warmup=True)
    decays = []
    for t in (0, 1, 2, 80, 1000):
        warm.num_updates = t
        decays.append(round(warm.current_decay(), 4))
    assert decays == [0.1, 0.1818, 0.25, 0.9, 0.9]


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_checkpointer_atomic_latest_keep_last_and_load(tmp_path):
    ck = Checkpointer(str(tmp_path), keep_last=2)
    assert ck.latest() is None
    for step in (1, 2, 3):
        ck.save(step, {"model": {"w": torch.full((2,), float(step))}},
                {"opt": {"lr": np.float64(0.5)}, "loader": {"batches": step}})
    assert sorted(os.listdir(ck.root)) == ["latest", "step-000002", "step-000003"]  # no temp dirs left
    assert ck.latest().endswith("step-000003")
    weights, state = Checkpointer.load(ck.latest())
    assert torch.equal(weights["model"]["w"], torch.full((2,), 3.0))
    assert state["step"] == 3 and state["loader"]["batches"] == 3 and state["opt"]["lr"] == 0.5
    with pytest.raises(FileNotFoundError, match="state.pt"):
        Checkpointer.load(str(tmp_path))


def test_check_finite_names_step_and_last_checkpoint(tmp_path):
    ck = Checkpointer(str(tmp_path))
    check_finite({"l2": 0.5}, 3, ck)
    ck.save(5, {"model": {"w": torch.zeros(1)}}, {})
    with pytest.raises(NonFiniteLossError, match=r"step 7.*'l2': nan.*step-000005"):
        check_finite({"l2": float("nan"), "gan": 1.0}, 7, ck)


def test_checkpointer_keeps_the_newest_past_a_million_steps(tmp_path):
    # step-1000000 sorts before step-999998 as text: pruning must order by step number
    ck = Checkpointer(str(tmp_path), keep_last=2)
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        ck.save(step, {"model": {"w": torch.zeros(1)}}, {})
    assert sorted(os.listdir(ck.root)) == ["latest", "step-1000000", "step-1000001"]

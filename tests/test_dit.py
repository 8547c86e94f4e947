"""DiT over TexTok tokens: shapes, adaLN-Zero init, CFG, text masking, persistence (tiny, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from textok.trainer.models.dit import DIT_PRESETS, DiT, DiTConfig, dit_config

N, D, TEXT_DIM = 8, 8, 16


def tiny(**overrides) -> DiT:
    torch.manual_seed(0)
    return DiT(dit_config("tiny", num_tokens=N, token_dim=D, num_classes=10, text_dim=TEXT_DIM,
                          max_text_tokens=12, **overrides))


def randomize(model: DiT, std: float = 0.1) -> DiT:
    """Move off the adaLN-Zero init so every path contributes (otherwise outputs are all zero)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def inputs(B=3, L=5):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, N, D, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    return x, t, y, text


def test_presets_and_config_errors():
    xl = dit_config("XL", num_tokens=32)
    assert (xl.width, xl.depth, xl.heads, xl.token_dim) == (1152, 28, 16, 8)
    assert set(DIT_PRESETS) == {"tiny", "S", "B", "L", "XL"}
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_config("XXL", num_tokens=32)
    with pytest.raises(ValueError, match="num_tokens"):
        dit_config("B")
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(num_tokens=4, width=10, heads=3)


@pytest.mark.parametrize("t2i,learn_sigma", [(False, True), (True, True), (False, False)])
def test_output_shapes(t2i, learn_sigma):
    model = tiny(t2i=t2i, learn_sigma=learn_sigma)
    x, t, y, text = inputs()
    out = model(x, t, text_emb=text) if t2i else model(x, t, y=y)
    assert out.shape == (3, N, 2 * D if learn_sigma else D)


def test_identity_at_init_and_zero_output():
    for t2i in (False, True):
        model = tiny(t2i=t2i).train()  # training mode: label/text dropout active too
        x, t, y, text = inputs()
        seen = []
        hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.blocks]
        out = model(x, t, text_emb=text) if t2i else model(x, t, y=y)
        for h in hooks:
            h.remove()
        assert len(seen) == len(model.blocks)
        for block_in, block_out in seen:
            torch.testing.assert_close(block_out, block_in, rtol=0, atol=0)
        assert torch.count_nonzero(out) == 0


def test_identity_fails_once_gates_move():
    """The identity test above can fail: a non-zero gate makes the block change its input."""
    model = tiny().eval()
    with torch.no_grad():
        model.blocks[0].adaLN[-1].bias.fill_(0.5)
    x, t, y, _ = inputs()
    h = model.x_embed(x) + model.pos
    c = model.t_embed(t) + model.y_embed(y)
    assert not torch.allclose(model.blocks[0](h, c), h)


def test_cfg_scale_one_is_conditional_and_scale_guides_eps_only():
    model = randomize(tiny())
    x, t, y, _ = inputs()
    cond = model(x, t, y=y)
    uncond = model(x, t, y=torch.full_like(y, 10))
    torch.testing.assert_close(model.forward_with_cfg(x, t, 1.0, y=y), cond, rtol=1e-5, atol=1e-6)
    guided = model.forward_with_cfg(x, t, 4.0, y=y)
    torch.testing.assert_close(guided[..., :D], uncond[..., :D] + 4.0 * (cond[..., :D] - uncond[..., :D]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[..., D:], cond[..., D:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided, cond)


def test_label_dropout_in_training_uses_null_class():
    model = randomize(tiny(class_dropout=1.0))
    x, t, y, _ = inputs()
    null_out = model(x, t, y=torch.full_like(y, 10))
    model.train()
    torch.testing.assert_close(model(x, t, y=y), null_out)
    model.eval()  # eval never drops
    assert not torch.allclose(model(x, t, y=y), null_out)


def test_text_padding_does_not_change_t2i_output():
    model = randomize(tiny(t2i=True))
    x, t, _, text = inputs(B=2, L=5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ref = model(x, t, text_emb=text, text_mask=mask)
    junk = torch.randn(2, 4, TEXT_DIM) * 100
    padded = model(x, t, text_emb=torch.cat([text, junk], 1),
                   text_mask=torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, ref, rtol=1e-4, atol=1e-5)
    # ...while a real token does matter (the test above is not vacuous)
    changed = text.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(model(x, t, text_emb=changed, text_mask=mask), ref, atol=1e-4)


def test_t2i_cfg_and_input_errors():
    model = randomize(tiny(t2i=True))
    x, t, y, text = inputs()
    cond = model(x, t, text_emb=text)
    torch.testing.assert_close(model.forward_with_cfg(x, t, 1.0, text_emb=text), cond, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no real token"):
        model(x, t, text_emb=text, text_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_dim"):
        model(x, t, text_emb=torch.randn(3, 5, TEXT_DIM + 1))
    with pytest.raises(ValueError, match="max_text_tokens"):
        model(x, t, text_emb=torch.randn(3, 13, TEXT_DIM))
    torch.testing.assert_close(model(x, t, text_emb=text.half()), model(x, t, text_emb=text.half().float()))
    with pytest.raises(ValueError, match="needs text_emb"):
        model(x, t, y=y)
    cls_model = tiny()
    with pytest.raises(ValueError, match="needs y"):
        cls_model(x, t)
    with pytest.raises(ValueError, match="labels must lie"):
        cls_model(x, t, y=torch.tensor([0, 1, 11]))
    with pytest.raises(ValueError, match="num_tokens"):
        cls_model(torch.randn(3, N + 1, D), t, y=y)


@pytest.mark.parametrize("overrides", [dict(), dict(t2i=True, pos_embed="learned")])
def test_save_load_round_trip(tmp_path, overrides):
    model = randomize(tiny(**overrides))
    x, t, y, text = inputs()
    kwargs = dict(text_emb=text) if model.cfg.t2i else dict(y=y)
    model.save_pretrained(tmp_path / "dit")
    assert json.loads((tmp_path / "dit" / "config.json").read_text())["num_tokens"] == N
    loaded = DiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.cfg == model.cfg
    torch.testing.assert_close(loaded(x, t, **kwargs), model(x, t, **kwargs), rtol=0, atol=0)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiT.from_pretrained(tmp_path)
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["widht"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="widht"):
        DiT.from_pretrained(tmp_path)


def test_text_dropout_in_training_uses_learned_null_text():
    model = randomize(tiny(t2i=True, text_dropout=1.0))
    x, t, _, text = inputs()
    null_out = model(x, t, text_emb=text, drop_cond=torch.ones(3, dtype=torch.bool))
    # the null text ignores the caption entirely
    torch.testing.assert_close(model(x, t, text_emb=torch.randn_like(text), drop_cond=torch.ones(3, dtype=torch.bool)),
                               null_out)
    model.train()
    torch.testing.assert_close(model(x, t, text_emb=text), null_out)
    model.eval()
    assert not torch.allclose(model(x, t, text_emb=text), null_out)


@pytest.mark.parametrize("t2i", [False, True])
def test_every_parameter_gets_a_gradient_without_cfg_dropout(t2i):
    # DDP (find_unused_parameters=False) fails at the next step if a parameter gets no gradient:
    # with --cfg-dropout 0 the null text must still sit in the graph (with zero gradient)
    model = randomize(tiny(t2i=t2i, text_dropout=0.0, class_dropout=0.0)).train()
    x, t, y, text = inputs()
    out = model(x, t, text_emb=text) if t2i else model(x, t, y=y)
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

"""Tiny random-weight VLMs of the families people run, built offline and saved like Hub checkpoints.

    from tiny_vlms import BUILDERS
    path = BUILDERS["qwen2_vl"](tmp_dir)        # then LocalVLMCaptioner(path).setup()

Every builder makes its processor from config objects and a word-level tokenizer (never
`from_pretrained` of a Hub id), a 1-2 layer model with hidden size 16-32, saves both with
`save_pretrained` and returns the folder, so tests load through the real `from_pretrained`
path. Generation is kept to words: each model's saved generation config suppresses the
special tokens (a random model would otherwise often stop at once or answer `<pad>`).
Families with a video processor (Qwen2-VL, Qwen2.5-VL, SmolVLM) also get the
`video_preprocessor_config.json` a Hub checkpoint has, so loading meets the same torchvision
requirement a user meets. `CHAT` families take our instruction prompt through their chat
template; the others (`TASK_PROMPTS`) are asked with their own task prompt.

Versions covered: transformers 5.x, checked at the version requirements/constraints.txt pins
(5.25.0). Processors are built through their constructors and loaded back through
`from_pretrained`, never through private loading hooks, so a release that changes how a processor
is assembled (5.2x moved from `from_args_and_dict` to `from_dict`) fails here, in the loader the
product uses, not in the builder. transformers 4.x is not supported (pyproject says why).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch

WORDS = ["a", "picture", "of", "red", "green", "blue", "square", "circle", "cat", "dog", "on", "the", "grass",
         "small", "large", "white", "background", "sky", "tree", "car", "caption", "en", "describe", "image"]


def word_tokenizer(specials: list[str], **named):
    """A fast word-level tokenizer: `specials` first (ids 0..), then WORDS; `named` maps
    attributes (pad_token, image_token, ...) to tokens; every special splits out of text
    even without spaces around it, as a real tokenizer's added tokens do."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(specials)
    base = {k: v for k, v in named.items() if k in ("pad_token", "unk_token", "bos_token", "eos_token")}
    extra = {k: v for k, v in named.items() if k not in base}
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra, **base), vocab


def chat_template(image: str, bos: str = "") -> str:
    """A minimal chat template that writes `image` where the image goes (and `bos` first)."""
    return (bos + "{% for m in messages %}<|user|> {% for c in m['content'] %}{% if c['type'] == 'image' %}"
            + image + " {% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %} <|assistant|>{% endif %}")


def _save(model, processor, out: str, specials: list[str], video_config: dict | None = None,
          widen: float | None = None) -> str:
    if widen:  # the default init (0.02) lets a tiny random model ignore the image; wider weights let
        with torch.no_grad():  # captions differ per image, so a test can see a caption on the wrong image
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, widen)
    model.generation_config.suppress_tokens = list(range(len(specials)))
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if video_config is not None:  # as on the Hub: the video processor needs torchvision to load
        with open(os.path.join(out, "video_preprocessor_config.json"), "w") as f:
            json.dump(video_config, f)
    return out


def image_only(processor_cls):
    from textok.pipeline.captioning.captioners.local import _image_only

    return _image_only(processor_cls)


def _llama(vocab: dict, **kw) -> dict:
    return dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, **kw)


# --------------------------------------------------------------------------- encoder-decoder / task


def build_blip(out: str) -> str:
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    ids = {t: vocab[t] for t in specials}
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"],
                         eos_token_id=ids["[SEP]"], initializer_range=0.2),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8, initializer_range=0.2),
        # BLIP's default init (0.02) makes a tiny random model ignore the image; wider weights
        # let captions differ per image, so order checks can see a shuffle.
        projection_dim=32, initializer_range=0.2)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(cfg)
    with torch.no_grad():  # BLIP's text decoder generates with its own config: keep it to words this way
        for t in specials:
            model.text_decoder.cls.predictions.bias[ids[t]] = -1e4
    return _save(model, processor, out, specials)


def build_blip2(out: str) -> str:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    specials = ["<pad>", "<unk>", "</s>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="</s>", eos_token="</s>")
    # The processor adds its own "<image>" token (the next id), as for the Salesforce checkpoints.
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                               num_query_tokens=4)
    image_id = tok.convert_tokens_to_ids("<image>")
    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, initializer_range=0.2),
        qformer_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=OPTConfig(vocab_size=image_id + 1, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                              pad_token_id=0, bos_token_id=2, eos_token_id=2),
        num_query_tokens=4, image_token_index=image_id)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(cfg)
    # BLIP-2 generates with its language model's own generation config, which a saved
    # `suppress_tokens` does not reach: zero the special rows of the tied embedding instead,
    # so their logits (0) lose to the words'.
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:len(specials)] = 0
        emb[image_id] = 0
    return _save(model, processor, out, specials)


def build_florence2(out: str) -> str:
    """The converted (florence-community) layout: transformers' own Florence2 classes, no remote code."""
    from transformers import (BartConfig, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                image_token="<image>")
    ip = CLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                            do_center_crop=False)
    ip.image_seq_length = 17  # 32 px through strides 4 and 2: 4x4 patch features + 1 pooled token
    processor = Florence2Processor(image_processor=ip, tokenizer=tok)
    cfg = Florence2Config(
        text_config=BartConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                               eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None),
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[1, 2], num_groups=[1, 2],
                           window_size=2, projection_dim=32, drop_path_rate=0.0, max_position_embeddings=16),
        image_token_id=vocab["<image>"])
    torch.manual_seed(0)
    return _save(Florence2ForConditionalGeneration(cfg), processor, out, specials, widen=0.2)


def build_paligemma(out: str) -> str:
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                image_token="<image>")
    ip = SiglipImageProcessor(size={"height": 32, "width": 32})
    ip.image_seq_length = 16  # (32 / 8) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8),
        text_config=GemmaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                                eos_token_id=1, bos_token_id=2),
        image_token_index=vocab["<image>"], projection_dim=32, hidden_size=32, vocab_size=len(vocab))
    torch.manual_seed(0)
    return _save(PaliGemmaForConditionalGeneration(cfg), processor, out, specials, widen=0.2)


# --------------------------------------------------------------------------- chat VLMs


def build_llava(out: str) -> str:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                image_token="<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=chat_template("<image>"),
        image_token="<image>", num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(**_llama(vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3)),
        image_token_id=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return _save(LlavaForConditionalGeneration(cfg), processor, out, specials)


def _qwen(out: str, version: str) -> str:
    import transformers as tf

    config_cls, model_cls, processor_cls = {
        "2": (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor),
        "2.5": (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor)}[version]
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>", "<|user|>", "<|assistant|>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>")
    ip_kw = dict(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2, temporal_patch_size=2)
    processor = image_only(processor_cls)(image_processor=tf.Qwen2VLImageProcessor(**ip_kw), tokenizer=tok,
                                          chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    vision = dict(depth=1, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    vision.update(embed_dim=16) if version == "2" else vision.update(hidden_size=16, out_hidden_size=32,
                                                                     intermediate_size=32, fullatt_block_indexes=[0])
    cfg = config_cls(
        text_config=_llama(vocab, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                   "rope_theta": 10000.0},
                           pad_token_id=0, eos_token_id=vocab["<|im_end|>"], bos_token_id=None),
        vision_config=vision, image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(0)
    return _save(model_cls(cfg), processor, out, specials, widen=0.2,
                 video_config={"video_processor_type": "Qwen2VLVideoProcessor", **ip_kw})


def build_qwen2_vl(out: str) -> str:
    return _qwen(out, "2")


def build_qwen2_5_vl(out: str) -> str:
    return _qwen(out, "2.5")


def _idefics(out: str, smol: bool) -> str:
    import transformers as tf

    specials = ["<pad>", "<unk>", "<s>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                "<global-img>", "<|user|>", "<|assistant|>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                eos_token="<end_of_utterance>", image_token="<image>",
                                fake_image_token="<fake_token_around_image>", global_image_token="<global-img>",
                                end_of_utterance_token="<end_of_utterance>")
    ip_cls = tf.SmolVLMImageProcessor if smol else tf.Idefics3ImageProcessor
    ip = ip_cls(size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    # 32 px / 8 px patches = 16 patches; pixel shuffle by scale 2 leaves 4 image tokens.
    if smol:
        processor = image_only(tf.SmolVLMProcessor)(image_processor=ip, tokenizer=tok, video_processor=None,
                                                    image_seq_len=4, chat_template=chat_template("<image>"))
        cfg = tf.SmolVLMConfig(vision_config=vision, text_config=_llama(vocab, pad_token_id=0, bos_token_id=2,
                                                                        eos_token_id=3),
                               scale_factor=2, image_token_id=vocab["<image>"])
        model_cls, video = tf.SmolVLMForConditionalGeneration, {"video_processor_type": "SmolVLMVideoProcessor"}
    else:
        processor = tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                                         chat_template=chat_template("<image>"))
        cfg = tf.Idefics3Config(vision_config=vision, text_config=_llama(vocab, pad_token_id=0, bos_token_id=2,
                                                                         eos_token_id=3),
                                scale_factor=2, image_token_id=vocab["<image>"])
        model_cls, video = tf.Idefics3ForConditionalGeneration, None
    torch.manual_seed(0)
    return _save(model_cls(cfg), processor, out, specials, video_config=video)


def build_idefics3(out: str) -> str:
    return _idefics(out, smol=False)


def build_smolvlm2(out: str) -> str:
    return _idefics(out, smol=True)


def build_gemma3(out: str) -> str:
    """Gemma 3's template writes `<bos>` itself, and its tokenizer adds one too by default."""
    import transformers as tf

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                "<|user|>", "<|assistant|>"]
    tok, vocab = word_tokenizer(specials, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                boi_token="<start_of_image>", eoi_token="<end_of_image>",
                                image_token="<image_soft_token>")
    tok.add_bos_token = True
    tok.update_post_processor()
    processor = tf.Gemma3Processor(image_processor=tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}),
                                   tokenizer=tok, image_seq_length=4,
                                   chat_template=chat_template("<start_of_image>", bos="<bos>"))
    cfg = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                                        max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=vocab["<start_of_image>"], eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"])
    torch.manual_seed(0)
    model = tf.Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # initialised to zeros (trained checkpoints fill it): the image would not matter
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return _save(model, processor, out, specials, widen=0.2)


BUILDERS: dict[str, Callable[[str], str]] = {
    "florence2": build_florence2, "blip": build_blip, "blip2": build_blip2, "llava": build_llava,
    "paligemma": build_paligemma, "idefics3": build_idefics3, "smolvlm2": build_smolvlm2, "gemma3": build_gemma3,
    "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl,
}
# Families asked with their own task prompt (no chat template in these checkpoints).
TASK_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>", "blip": "a picture of", "blip2": "a picture of", "paligemma": "caption en"}
CHAT = [name for name in BUILDERS if name not in TASK_PROMPTS]

"""Tiny random-weight SD3 and FLUX pipelines built from configs, so the flow backbones, the joint
attention probes and the flow loop are tested offline.

Both use a T5 tokenizer written here (a sentencepiece Unigram model, as T5's, in which "circle" is
two sub-words, "▁cir" and "cle") and tests/tiny.py's CLIP BPE tokenizer (in which it is two as
well, "cir" "cle</w>"). Widths are a few dozen, latents 4 x 8 x 8, images 16 x 16.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import WORDS, write_clip_tokenizer

T5_LENGTH = 12


def t5_tokenizer():
    """A T5TokenizerFast over a Unigram vocabulary: "▁word" for the test words, "▁cir" + "cle"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>"] + [f"▁{w}" for w in WORDS] + ["▁cir", "cle", "▁"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = [(p, -1.0 if p.startswith("▁") and len(p) > 1 else -5.0) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=T5_LENGTH, extra_ids=0)


def _t5(vocab: int, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _clip(tok, projection: bool, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, projection_dim=width)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=16, scaling_factor=1.5, shift_factor=shift)


def tiny_sd3_pipeline(tmp: Path, t5: bool = True, dual: tuple = ()):
    """SD3's layout at small widths: two CLIPs with projections (16 + 16 wide states, zero-padded to
    the T5's 32), a T5, an MMDiT of four joint blocks (the last context-pre-only, as SD3's) with
    RMS q/k norms as SD3.5's, and a flow-matching scheduler with SD3's shift 3. `dual`: the blocks
    that also have SD3.5's second, image-only attention (attn2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizerFast

    torch.manual_seed(0)
    tok = CLIPTokenizerFast.from_pretrained(write_clip_tokenizer(Path(tmp) / "tokenizer"))
    clip1, clip2 = _clip(tok, True, 16), _clip(tok, True, 16)
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16, qk_norm="rms_norm",
                                        dual_attention_layers=dual)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(0.1),
        text_encoder=clip1, tokenizer=tok, text_encoder_2=clip2, tokenizer_2=tok,
        text_encoder_3=_t5(len(t5_tok)) if t5 else None, tokenizer_3=t5_tok if t5 else None,
    )


def tiny_flux_pipeline(tmp: Path, guidance: bool = True):
    """FLUX.1's layout at small widths: a CLIP (pooled output), a T5 (the text sequence), an MMDiT of
    three double-stream and two single-stream blocks with RoPE over (0, row, col) ids, the
    guidance embedding of the distilled dev model, and a dynamically shifted schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizerFast

    torch.manual_seed(0)
    tok = CLIPTokenizerFast.from_pretrained(write_clip_tokenizer(Path(tmp) / "tokenizer"))
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=3, num_single_layers=2, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance, axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(0.1), text_encoder=_clip(tok, False),
                        tokenizer=tok, text_encoder_2=_t5(len(t5_tok)), tokenizer_2=t5_tok)
    pipe.default_sample_size = 8  # latent side: 8 x 8 (FLUX's own is 128, for 1024 px)
    return pipe

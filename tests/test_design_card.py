"""The design card's example, verbatim, on a latent Stable Diffusion pipeline built from configs,
with its `smile` direction learned in the test by `steer learn hspace`; and its shapes-world
analogue from examples/ on the shipped model."""

from pathlib import Path

from PIL import Image

from tiny import tiny_sd_pipeline

CARD = 'centroid(token "dog") -> (0.7,0.5); keep appearance; direction smile*1.5'


def _tiny_clip(folder: Path, tokenizer):
    """A random-weight CLIP with the tiny pipeline's tokenizer: what `--clip` loads offline."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_design_cards_example_runs_on_a_latent_pipeline_with_a_learned_smile(tmp_path):
    from dsl.cli import main
    from sampler import learn

    pipe = tiny_sd_pipeline(tmp_path / "build")
    pipe.save_pretrained(tmp_path / "sd", safe_serialization=True)
    clip = _tiny_clip(tmp_path / "clip", pipe.tokenizer)
    assert learn.main(["hspace", "smile", "--from", "a photo of a dog", "--to", "a photo of a red dog", "--model", str(tmp_path / "sd"),
                       "--clip", str(clip), "--steps", "4", "--n-images", "1", "--iters", "1", "--out", str(tmp_path / "directions"),
                       "--work", str(tmp_path / "work")]) == 0
    assert (tmp_path / "directions" / "smile.safetensors").is_file()

    script = tmp_path / "card.edit"
    script.write_text(f'prompt "a photo of a dog"\nsteps 4\n{CARD}\n')
    out = tmp_path / "card.png"
    assert main(["run", str(script), "--model", str(tmp_path / "sd"), "-o", str(out), "-q"]) == 0
    with Image.open(out) as im:
        assert im.size == (32, 32)


def test_the_shapes_analogue_in_examples_runs_on_the_shipped_model(tmp_path, shapes_path):
    from dsl.cli import main

    example = Path(__file__).parent.parent / "examples" / "design_card.edit"
    text = example.read_text()
    assert "direction" in text and "keep appearance" in text and "centroid(" in text
    out = tmp_path / "card.png"
    assert main(["run", str(example), "--model", shapes_path, "--steps", "6", "-o", str(out), "-q"]) == 0
    assert out.is_file()

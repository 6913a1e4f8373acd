"""The shapes model's card (docs/shapes-model.md): how it was made and what it measures, written
from the training record in the model folder and the report of `python -m sampler.shapes.evaluate`."""

from __future__ import annotations

from . import world as W


def describe(b) -> str:
    """The model's architecture, read from its own configs (b: a ShapesBackbone)."""
    u, te = b.unet.config, b.text_encoder.config
    attn = [i for i, k in enumerate(u.down_block_types) if "CrossAttn" in k]
    latent = u.sample_size
    res = ", ".join(f"{latent // 2 ** i}x{latent // 2 ** i}" for i in attn)
    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    size = b.image_size()[0]
    L = ["steer's shipped text-to-image model for the shapes world (circle, square, triangle in red, green, blue, yellow on",
         f"black, {size}x{size} pixels). Built from Stable Diffusion's classes: a transformers `CLIPTextModel` ({te.num_hidden_layers} layers,",
         f"{te.hidden_size} wide, {n_params(b.text_encoder):.1f}M parameters) with a word-level `tokenizers` tokenizer,"]
    if b.vae is not None:
        v = b.vae.config
        L += [f"a diffusers `AutoencoderKL` ({n_params(b.vae):.1f}M parameters) between the {size}x{size}x3 image and a "
              f"{latent}x{latent}x{v.latent_channels} latent (scaling factor {v.scaling_factor:.3f}, shift {v.shift_factor:.3f}),",
              f"a diffusers `UNet2DConditionModel` on that latent ({n_params(b.unet):.1f}M parameters, channels "
              f"{'/'.join(map(str, u.block_out_channels))}, cross-attention at {res} and in the mid block, epsilon prediction),"]
    else:
        L += [f"a diffusers `UNet2DConditionModel` in pixel space ({n_params(b.unet):.1f}M parameters, channels "
              f"{'/'.join(map(str, u.block_out_channels))}, cross-attention at {res} and in the mid block),"]
    L += ["diffusers' DDIM scheduler, and a shapes CLIP (`CLIPModel`, ViT image tower) for the ViT and CLIP energies.",
          "Weights are safetensors in `sampler/shapes/weights/`; `Editor(\"shapes\")` loads them offline."]
    return "\n".join(L)


def _pct(v: dict) -> str:
    return f"{v['right']:.0%} (n={v['n']})"


def training_section(training: dict) -> list[str]:
    """The card's Training section from a model folder's training record (empty without one)."""
    if not training:
        return []
    L: list[str] = []
    L += ["- commands, in order (a resumed run continues the same seeded schedule): "
          + "; ".join(f"`{c}`" for c in training.get("commands", [training.get("command", "?")])),
          f"- seed {training.get('seed')}; torch {training.get('torch')}; date {training.get('date')}"]
    for stage, what in (("vae", "autoencoder"), ("unet", "UNet + text encoder"), ("clip", "shapes CLIP")):
        if f"{stage}_steps" in training:  # the first generation's record has one batch and machine for all
            batch, machine = (training.get(f"{stage}_{k}", training.get(k)) for k in ("batch", "machine"))
            L.append(f"- {what}: {training[f'{stage}_steps']} steps at batch {batch} in {training.get(f'{stage}_minutes')} min"
                     f" ({machine})")
    for k, stage in enumerate(training.get("ground_stages", []), 1):  # each grounding fine-tune, in order
        L.append(f"- grounding stage {k}: {stage.get('steps')} steps at batch {stage.get('batch')} in {stage.get('minutes')} min"
                 f" ({stage.get('machine')}): `{stage.get('command')}`")
    for note in training.get("notes", []):
        L.append(f"- {note}")
    L += [""]
    if training.get("ablation"):  # rows the trainer's operator measured: what was tried, what it bought
        L += ["### What was tried", "", "| change | measured | what it bought |", "| --- | --- | --- |"]
        L += [f"| {a['change']} | {a['measured']} | {a['bought']} |" for a in training["ablation"]]
        L += [""]
    return L


def model_card(r: dict, b, command: str) -> str:
    """The model card: how the shipped model was made and what it measures."""
    training = b.model.card.get("training", {})
    L = ["# The shapes model", "", describe(b), "", "## Training", "", *training_section(training)]
    L += ["## Measured", "", f"Reproduce with `{command}` ({r['seconds']} s). Samples use {r['steps']} DDIM steps; sampling seeds",
          f"of the `{r['split']}` split (settings are chosen on the `tune` split; training draws neither).", "",
          "### Caption fidelity (the world's detector on samples)", "",
          "Every one-object caption (12, 8 seeds each) and every two-object caption (108: all colour pairs, all shape",
          "pairs, both orders). *Right* means exactly the named objects, each of its colour and shape, nothing extra.", "",
          "| cfg | one object right | two objects right | two objects: colours right |", "| --- | --- | --- | --- |"]
    for cfg, f in r["fidelity"].items():
        L.append(f"| {cfg} | {f['one_object']['all_right']:.1%} (n={f['one_object']['n']}) | {f['two_objects']['all_right']:.1%} "
                 f"(n={f['two_objects']['n']}) | {f['two_objects']['colours_right']:.1%} |")
    L += ["", "Per object of the two-object scenes (found with its colour and shape), by shape and by colour:", "",
          "| cfg | " + " | ".join((*W.SHAPES, *W.COLOURS)) + " |", "| --- |" + " --- |" * (len(W.SHAPES) + len(W.COLOURS))]
    for cfg, f in r["fidelity"].items():
        per = f["two_objects"]["per_object"]
        L.append(f"| {cfg} | " + " | ".join(_pct(per[k]) for k in (*W.SHAPES, *W.COLOURS)) + " |")
    for cfg, f in r["fidelity"].items():
        wrong = [x for part in ("one_object", "two_objects") for x in f[part].get("failures", [])]
        if wrong:
            L += ["", f"What the detector found where a caption was not drawn right, at cfg {cfg} ({len(wrong)} images):", ""]
            L += [f"- {x['caption']} (seed {x.get('seed', '?')}): " + (", ".join(x["found"]) or "nothing") for x in wrong]
    if "localisation" in r:
        L += ["", "### Cross-attention localisation", "",
              "World images with two objects, noised to t; for a word, the top-k cells of its attention map (k = its object's",
              "area; maps averaged over the layers the energies read) against its own object's mask / the other object's.", "",
              "| word | " + " | ".join(f"t = {t}" for t in next(iter(r["localisation"].values()))) + " |",
              "| --- |" + " --- |" * len(next(iter(r["localisation"].values())))]
        for key, by_t in r["localisation"].items():
            L.append(f"| {key} | " + " | ".join(f"{v['own_object']:.2f} / {v['other_object']:.2f}" for v in by_t.values()) + " |")
    if "inversion" in r:
        inv = r["inversion"]
        L += ["", "### Inversion and regeneration through `source \"image.png\"`", "",
              "Each image saved as a PNG and given to the editor as its `source` with nothing to edit: encoded, DDIM-inverted",
              "at cfg 1 with the editor's safeguarded fixed-point refinement, the source pass walked along the inverted",
              "latents, the edit pass sampled with their offsets (direct inversion), decoded; PSNR against the PNG. Beside it,",
              "plain sampling from the inverted noise alone, without offsets: how well the inversion itself is undone."
              + (f" Measured again with `{inv['command']}` ({inv['seconds']} s)." if inv.get("command") else ""), "",
              "| images | steps | through `source`: mean PSNR | min | share >= 30 dB | share < 25 dB "
              "| from z_T alone: mean PSNR | min | share < 25 dB |", "| --- |" + " --- |" * 8]
        for k, name in (("generated", "generated samples"), ("world", "world images")):
            v = inv[k]
            row = f"| {name} (n={v['n']}) | {v['steps']} | {v['mean_psnr']:.1f} dB | {v['min_psnr']:.1f} dB | " \
                  f"{v['share_at_least_30db']:.0%} | {v['share_under_25db']:.0%} |"
            a = v.get("from_noise_alone")
            L.append(row + (f" {a['mean_psnr']:.1f} dB | {a['min_psnr']:.1f} dB | {a['share_under_25db']:.0%} |" if a else " | | |"))
    else:  # a card written before its inversion was measured says so
        L += ["", "### Inversion and regeneration through `source \"image.png\"`", "",
              "Not measured on this model yet: `python -m sampler.shapes.evaluate --only inversion` measures it and "
              "rewrites this card."]
    c = r.get("clip") or {}
    if c:
        L += ["", "### Shapes CLIP", "", f"Zero-shot caption retrieval on {c['n']} held-out scenes among all {c['candidates']} captions of the",
              f"world: top-1 {c['top1']:.0%} (one object {c['top1_one_object']:.0%}, two objects {c['top1_two_objects']:.0%})."]
    return "\n".join(L) + "\n"

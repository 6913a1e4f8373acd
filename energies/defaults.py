"""Every default of every term, in one place: weights, windows, placements, layers, thresholds.

A term's `weight` in a script multiplies the default weight here, so `* 2` always means "twice
the usual strength". Windows are fractions of sampling progress (0 = pure noise, 1 = done).
Sources are in docs/methods.md (section N per method); values marked "tuned" were chosen with `steer bench` on the
shapes model (see the bench notes in the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclass_replace


@dataclass(frozen=True)
class TermDefaults:
    weight: float
    window: tuple[float, float]
    placement: str  # "eps": add w * grad to epsilon (Self-Guidance); "latent": z_t -= w * grad
    # before the UNet call (Pix2Pix-Zero, A&E); "mean": x_{t-1} -= w * grad (DiffuseIT, FreeDoM);
    # "x0": x0 -= w * dE/dx0, the gradient taken on the predicted x0 only (MPGD)
    every: int = 1  # the gradient at every k-th step of the window, reused between (`every k`)


# Self-Guidance applies its gradient to epsilon without a sigma_t factor (demo code), at steps
# 20..280 of 300; layout is decided early, so layout terms stop before the end (tuned).
# Move, shift and resize relocate their object first (RELOCATE below); after that, their attention
# energy only holds it, and `steer bench` on the shapes model (16 seeds, target (0.75, 0.5),
# relocation with the protected square) found that any weight above ~1 costs the other objects
# (kept IoU 0.83 at 0.4, 0.76 at 10, 0.64 at 40) without placing the moved one better (within
# 0.1: 62%, 56%, 62%). So 0.4 (tuned); shape_from, which does not relocate, keeps
# Self-Guidance's scale.
# Every 8: the relocating terms' gradient, and keep appearance's, is taken at every 8th step of its
# window and reused between (`every k`; a window's edge takes a fresh one). Measured with
# `python -m sampler.bench.pace --every 1 4 8 12 --per-task 16 --split tune` on the shapes model:
# move, shift, move beside the other, resize x0.5 / x1.5 / x2 / to an area / to the other's size,
# keep appearance beside a move and the one-object move kept their successes at 4, 8 and 12 (within
# a case of 16), at 1.2-1.3x plain sampling's time instead of 2.3x. 8 is the middle of the ks that
# kept them, a margin for worlds and step counts the tune split does not cover. keep layout
# (75% -> 44% at 4) and keep attention (stayed within 0.05: 50% -> 0% at 4) need every step, and
# with them in a script the smallest k rules (sampler/editor.py, `reusing`).
EVERY = 8
X0_EVERY = 2  # the predicted image's terms (below)
# Layout terms relocate their object once, at this fraction of sampling (RELOCATE below).
RELOCATE_AT = 0.3
# The relocating terms' energy starts with their relocation: before it, it did nothing
# measurable. Tune split, 48 cases each, windows (0, 0.7) vs (0.3, 0.7): move 83% /
# 83% (each criterion the same), resize x0.5 79% / 77%; 94 of the 96 cases gave the same figure.
# Starting at 0.3, nothing in a move or resize script acts before that step, so the edit pass
# starts there from the source's z_t (sampler/editor.py first_change): 30% fewer guided steps.
LAYOUT_WINDOW = (RELOCATE_AT, 0.7)
TERMS = {
    "move": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),
    "shift": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),
    "move_to": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),  # a move whose target the source gives
    "resize": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),
    "size_like": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),  # a resize whose factor the source gives
    "size_to": TermDefaults(weight=0.4, window=LAYOUT_WINDOW, placement="eps", every=EVERY),  # a resize whose factor the area gives
    "shape_from": TermDefaults(weight=40.0, window=(0.0, 0.7), placement="eps"),
    "appearance_from": TermDefaults(weight=20.0, window=(0.0, 0.9), placement="eps"),
    "keep_appearance": TermDefaults(weight=10.0, window=(0.0, 0.9), placement="eps", every=EVERY),
    "keep_shape": TermDefaults(weight=20.0, window=(0.0, 0.7), placement="eps"),
    # Pix2Pix-Zero: one SGD step on z_t with lr 0.1 (cross_attention_guidance_amount), every step.
    "keep_attention": TermDefaults(weight=0.1, window=(0.0, 1.0), placement="latent"),
    # The predicted-x0 family acts on x0 itself (MPGD): the step is in image units whatever t is,
    # and needs no backward through the UNet. DiffuseIT's placement on the posterior mean (`via
    # mean`, through the UNet) blew up at the noisiest steps of the shapes model at any weight
    # that did something later on.
    # Weights: DiffuseIT's lambdas scaled down until the shapes model's images stayed whole (tuned);
    # CLIP's gradient on a 32-pixel image is adversarial late in sampling, so it stops at one half.
    # Every 2 (X0_EVERY): their gradient is the decoded image's through the VAE, CLIP and the ViT,
    # more than a UNet forward on the shapes model. `python -m sampler.bench.pace --task "clip
    # recolour" --task "clip recolour + keep structure" --task "style image" --every 1 2 4 --kinds
    # clip keep_structure style --per-task 16 --split tune`: stayed within 0.05 81 / 88 / 88%, 88 /
    # 94 / 81%, 100 / 100 / 100% at k = 1 / 2 / 4, colour taken 0% at every k (these terms do not
    # recolour on the shapes model); CLIP's margin moved toward the target on 15 / 16 / 13 of 16
    # (median 0.052 / 0.059 / 0.148); time 2.03 / 1.40 / 1.26x, 2.90 / 1.66 / 1.34x, 2.81 / 1.65 /
    # 1.35x plain. k = 2 lost nothing measured; k = 4 moved the margin on fewer cases.
    # Keep structure stops at 0.7 like the layout terms: its last 30% of steps changed nothing
    # measured (tune split, 16 cases each, windows 0..1 vs 0..0.7: clip recolour + keep structure
    # stayed within 0.05 94 / 94%, the object moved by the same distance to 0.004 on every case,
    # CLIP's margin moved toward the target on 11 / 13; style image stayed 100 / 100%), and those
    # steps were a third of an x0 edit's decodes through the VAE (docs/performance.md, section 10).
    # It stops at 0.5 with clip and style, which it holds against: tune split, 32 cases each,
    # windows 0..0.7 vs 0..0.5: clip recolour + keep structure stayed within 0.05 88 / 88%, CLIP's
    # margin moved toward the target on 91 / 94%; style image stayed 91 / 91%; an x0 edit costs
    # 1.53 -> 1.37x plain (section 12).
    "keep_structure": TermDefaults(weight=100.0, window=(0.0, 0.5), placement="x0", every=X0_EVERY),
    "style": TermDefaults(weight=1.0, window=(0.0, 0.5), placement="x0", every=X0_EVERY),
    # Tried for the clip term, not taken: CLIP reading 8 noisy views of the predicted image
    # (sigma up to 0.3, the embedding averaged; what `steer learn clip --views` does): clip
    # recolour, tune split, 12 cases, colour taken 0 / 1 of 12 at weight 20 / 100, stayed within
    # 0.05 8 / 3 of 12. The gradient still does not make a colour on this model.
    "clip": TermDefaults(weight=20.0, window=(0.0, 0.5), placement="x0", every=X0_EVERY),
    "keep_pixels": TermDefaults(weight=100.0, window=(0.0, 1.0), placement="x0", every=X0_EVERY),
    "direction": TermDefaults(weight=1.0, window=(0.0, 1.0), placement="eps"),
    # Recolour to words: the prompt's embedding shifted by s * (E(prompt with the words swapped) -
    # E(prompt)), s = the weight, at every step (Pix2Pix-Zero's c + delta_c), with keep attention's
    # hold added when the script has none. Remove: from the relocation step on, the prompt without
    # the object's phrase (weight 1: exactly that prompt's embedding), its region refilled before.
    "recolour": TermDefaults(weight=1.0, window=(0.0, 1.0), placement="eps"),
    "remove": TermDefaults(weight=1.0, window=(0.3, 1.0), placement="eps"),
    # DragNoise: the bottleneck is optimised at the window's start (inversion_strength 0.7: step 35
    # of 50 counted from t = 0, i.e. progress 0.3) and substituted until the end (end_step 0).
    # The weight multiplies the drag's share of the loss (several drags in one script).
    "drag": TermDefaults(weight=1.0, window=(0.3, 1.0), placement="bottleneck"),
}

# Where a backbone needs another default than the method's own (tuned on that backbone).
# Pix2Pix-Zero's loss sums squared map differences over pixels and tokens: SD's 64x64 maps over 77
# tokens give it a scale that the shapes model's 16x16 maps over 16 tokens do not. With the
# red_to_green prompt direction on 16 seeds of "a red circle and a blue square" (25 steps, the
# world's detector), the green circle stayed within 0.05 of the red one on 1 of 16 seeds at
# Pix2Pix-Zero's lr 0.1, on 14 / 15 / 16 at 1.0 / 2.0 / 3.0 (0 of 16 without the guidance).
# The shapes flow model (grounded, sampler/shapes/flow_ground.py), tune split, 8 cases a task,
# each weight set here in turn and `steer bench --split tune --per-task 8 --model shapes-flow`
# run: at the UNet's weights its energies' gradients wreck the scene (move 12%, keep
# appearance beside a move 12%). Relocation does a move's work on this model; its energy, at the
# UNet's 0.4, pushes the other object away: move 12 / 38 / 50% at 0.4 / 0.04 / 0.01 (0.002: as
# 0.01); keep appearance's weight made no difference at 10, 1 or 0.1 (0.1 kept); keep layout 0 /
# 25 / 75% at keep-shape weights 2 / 0.2 / 0.02; recolour 50 / 50 / 25% at keep-attention weights
# 1 / 3 / 10 (colour taken 75 / 50 / 25%).
_FLOW_LAYOUT = 0.01
# keep layout (keep shape of every object no statement moves) beside a move on the grounded shapes
# model, tune split, 16 cases, the untouched object at IoU >= 0.9: 75 / 75 / 100 / 94 / 94% at
# weights 20 / 5 / 1 / 0.2 / 0 (relocation's protection does most of the work; a strong hold on
# the other object's maps pulls it about instead), 94% at weight 1 taken every 8th step.
BACKBONE_TERMS = {
    "shapes": {"keep_attention": TermDefaults(weight=3.0, window=(0.0, 1.0), placement="latent"),
               "keep_shape": dataclass_replace(TERMS["keep_shape"], weight=1.0)},
    "shapes-flow": {
        **{k: dataclass_replace(TERMS[k], weight=_FLOW_LAYOUT) for k in ("move", "shift", "move_to", "resize", "size_like", "size_to")},
        "keep_appearance": dataclass_replace(TERMS["keep_appearance"], weight=0.1),
        "keep_shape": dataclass_replace(TERMS["keep_shape"], weight=0.02),
        "keep_attention": TermDefaults(weight=1.0, window=(0.0, 1.0), placement="latent"),
    },
}


def term_defaults(kind: str, backbone: str | None = None) -> TermDefaults:
    """The defaults of a term kind on a backbone family ("shapes", "sd", "sdxl"; None: the method's)."""
    return BACKBONE_TERMS.get(backbone, {}).get(kind, TERMS[kind])


# Learned directions (sampler/directions/: hspace.py, noise.py, prompt.py).
# A script's `* s` multiplies:
# h-space: delta-h, times Asyrp's n_train_step / n_test_step; window: Asyrp's t_edit (hspace.EDIT_WINDOW)
# noise: NoiseCLR's lambda = s * NOISE_DIRECTION_SCALE, over NOISE_DIRECTION_WINDOW (NoiseCLR has no default);
#   within a token, s * NOISE_PHRASE_SCALE * cfg on the phrase's difference (below)
# prompt: Pix2Pix-Zero's delta_c, as c + s * delta_c, over PROMPT_DIRECTION_WINDOW
HSPACE_BOOST = True  # Asyrp's stochastic "quality boosting" (eta = 1) below t_boost when an h-space direction is used
# NoiseCLR's own editing_scale (7.5 on SD). It was 6 (the smallest that made the shipped shapes
# directions visible); `direction green within token`, tune split, 48 cases, scale 6 / 7.5 / 9:
# 25 / 30 / 30 of 48 (colour taken 28 / 37 / 37, stayed within 0.05 27 / 30 / 30); at 12, 29
# (colour taken 36). The window decides more than the scale, and the whole run stays best: at 7.5,
# windows 0.3..1 / 0.1..1 / 0..0.3 gave 11 / 17 / 27 of 48 (colour taken 11 / 19 / 31): on this
# model the direction's colour is made in the first tenth of the run, and so are its misses (the
# object gone from its place in 17 of the 18 misses at 0..1).
NOISE_DIRECTION_SCALE = 7.5
NOISE_DIRECTION_WINDOW = (0.0, 1.0)
# `direction NAME within token T`: the direction's token stands in T's phrase in place of its
# describing words ("a <d> circle and a blue square" for "a red circle and ..."), and
# lambda = s * NOISE_PHRASE_SCALE * cfg on eps(z, that prompt) - eps(z, the prompt), inside T's
# mask (sampler/directions/noise.py). Why: NoiseCLR's own difference, eps(z, "<d>") - eps(z, ""),
# draws a green object of the direction's own where it likes (alone, it redraws the scene around
# a new green shape); kept inside the object's mask it is mostly "no object here", and the object
# faded to background (17 of the 18 misses of 48 tune cases). In the phrase, the difference is
# "this object, but <d>". Tune split, `direction green within token`, 48 cases: NoiseCLR's
# difference at 7.5, 30 of 48; in the phrase at scale 2 / 3 / 4 / 6: 33 / 38 / 36 / 32 (on the
# first 16: 14 / 13 / 12 at 2 / 3 / 4, 5 at 1, 1 with <d> put beside the describing words
# instead of in their place). Tried for NoiseCLR's difference, not taken: windows starting at
# 0.1 / 0.2 / 0.4 / 0.7 (from 0.4 on no colour at all); adding `keep layout`, `keep appearance`
# or `keep shape(token T)` (the object still fades: 11 / 10 / 9 of the first 16 at the hold's
# weight 1 / 5 / 20, against 11 without) or `keep attention` (17 of 48 at scale 7.5: the hold
# keeps the old colour too); only the region's mean shift per latent channel (a colour offset
# without the direction's own layout), weights 3 / 4 / 5: 24 / 25 / 29 of 48.
NOISE_PHRASE_SCALE = 3.0
# prompt (Pix2Pix-Zero): the edit pass conditions on c + s * delta_c at every step.
PROMPT_DIRECTION_WINDOW = (0.0, 1.0)

# Layout terms also relocate their object's source region once, at RELOCATE_AT (above)
# (energies/relocate.py), with a mask from the source's maps over the steps after MASK_FROM.
RELOCATE = frozenset({"move", "shift", "move_to", "resize", "size_like", "size_to", "remove"})
RELOCATE_MASK_FROM = 0.8
# The copy mask: the late maps min-max normalised and thresholded. Generous on purpose: the rim an
# object's map leaves under a high threshold stays behind and the model regrows the object from it
# (a move then draws it twice); the objects the edit keeps are protected from the copy anyway.
# Tuned on the grounded second-generation shapes model, tune split, move task, 16 cases: within
# 0.1 on 12% / 19% / 62% / 88% / 100% at 0.5 / 0.3 / 0.2 / 0.15 / 0.1 (maps from up_blocks.1).
RELOCATE_MASK_THRESHOLD = 0.1
# Where the moved object is, for the shift (and the other object, for `-> centroid(token ...) + d`):
# with RELOCATE_CENTRE_IN_PIXELS, the centroid of its pixels in the source image (sampler/regions.py
# object_centre); otherwise the centre of its map's core, RELOCATE_CENTRE_THRESHOLD below, which
# places it to a latent cell (a sixteenth of the shapes model's image). With the pixel centre, a
# shift that falls between cells is also copied in pixels (energies/relocate.py whole_cells).
# Tune split, 48 cases each, median distance to the target before -> after (cells' centre and
# cell copy; pixel centre, cell copy; pixel centre and pixel copy): move 0.033 / 0.024 / 0.008,
# beside the other 0.039 / 0.021 / 0.008, shift 0.028 / - / 0.008, drag within 0.026 / - / 0.006;
# successes unchanged (their misses are sources and drawings, not aim), keep appearance and keep
# layout beside a move 47 -> 45 and 46 -> 45 of 48 (the kept object's IoU >= 0.9: a moved object
# that lands where it was asked, beside the kept one).
RELOCATE_CENTRE_IN_PIXELS = True
RELOCATE_CENTRE_THRESHOLD = 0.85  # the object's centre, for the shift, from the map's core (tuned: 0.5 / 0.7 / 0.85 / 0.95 gave 9 / 10 / 11 / 10 of 16 seeds moved within 0.1 with the square kept)

# Edits that change how objects look and nowhere where they are (every change of the script is
# one of these, or a direction `within` a region) blend: outside the edited objects' source masks
# (threshold RELOCATE_MASK_THRESHOLD, plus a margin; a `within` region as it is) each step's
# latent is the source's (sampler/regions.py local_blend). A shape swap blends too: the new
# silhouette of an object of the same size fits its old mask and the margin (tune split, shape
# swap with its word swap, 16 cases: 50% without the blend, 69% with it at margin 1, 50% at
# margin 2; without the shape energy beside the words, 62%).
LOCAL_BLEND = frozenset({"recolour", "appearance_from", "shape_from"})
# Restyled objects are put back where the source has them, once, at SETTLE_AT (sampler/regions.py
# settling): moved and scaled in pixels of the predicted x0 when they stand more than
# SETTLE_MIN_PIXELS or SETTLE_MIN_SCALE off the source's place and size (shape transfers: moved only).
# The drift it undoes is set in the first 2-4 of 25 steps and kept to the end, so the step matters
# little; RELOCATE_AT's, so that a move of a recoloured object copies the settled one. Tune split,
# 24 cases each, without -> with: recolour to a word 54 -> 79%, one object 46 -> 96%, appearance
# swap 33 -> 50%, shape swap 54 -> 79%, move + resize + recolour 21 -> 50%. A learned direction
# `within token` settles too (moved only: its change may be a size), on the fourth-stage model,
# tune split, 24 cases each, without -> with: `direction green within` 25 -> 54% (stayed within
# 0.05 29 -> 58%, colour taken 54% both), circle_to_square within 0% both (the shape is not taken).
SETTLE = frozenset({"recolour", "appearance_from", "shape_from", "direction"})
SETTLE_AT = RELOCATE_AT
# The keep-attention hold a recolour brings along ends at the relocation step where the script
# also moves or resizes the recoloured object (dsl/binding.py _hold_for): held to the end, the
# source's maps pulled the grown object back (area ratio 1.0-1.2 for a *= 1.5). Tune split, move
# + resize + recolour, 24 cases, hold window (0, end): end 1 / 0.6 / 0.4 / 0.25: 12 / 13 / 15 / 16
# of 24 (area within 20%: 12 / 13 / 15 / 16; within 0.1 18 and colour taken 20 at every end);
# 48 cases, end 1 / 0.3: 24 / 34 of 48 (area within 20% 25 / 35; within 0.1 38, colour 43 both).
RECOLOUR_HOLD_END_WITH_LAYOUT = RELOCATE_AT
# The hold is stronger where the edit prompt swaps two objects' words: an appearance swap, or a
# recolour to the other object's colour ("a green triangle and a blue square" -> "a blue triangle
# and a green square", dsl/binding.py _swapped). Two phrases' words now differ from those the
# source's maps were made with, and at the plain weight the old words took their other phrase's
# head word with them (a green square drawn where the green triangle was) or the object vanished.
# Tune split, 48 appearance swaps, hold weight 3 / 5 / 6 / 8 / 20 on the shapes model (a factor 1 /
# 5/3 / 2 / 8/3 / 20/3): 42 / 46 / 44 / 43 / 31 of 48 (colour taken 92 / 96 / 96 / 92 / 77%,
# stayed within 0.05 92 / 100 / 94 / 98 / 79%); at 5 the misses were 2 of the 6 at 3, none new.
# A shape swap changes one word and keeps the plain hold: at 5 / 8 it gave 41 / 42 of 48 against
# 43 (shape taken 94 -> 90 / 88%).
SWAPPED_HOLD_FACTOR = 5 / 3
SETTLE_MIN_PIXELS = 1.0
SETTLE_MIN_SCALE = 0.03
# Two of the prompt's objects whose source masks overlap by more than this share of the smaller one
# fall on one place: the source likely lacks one of them, and a statement about either gets a
# warning (sampler/one_place.py). Per model family, and only where measured: on a photo model two
# objects may share a place (a cat on a sofa). Shapes model, tune split, 144 two-object sources
# (keep layout beside a move, 2026-12-07): with both objects drawn (world detector) the larger of
# the two overlaps was at most 0.09 (139 sources); with one missing, 0.42 to 1.0 (5 of 5).
SAME_PLACE_OVERLAP = {"shapes": 0.3}
# A resize's copy is calibrated on its own first prediction (sampler/regions.py calibrated_scale):
# its scale times at least lo and at most hi, and only where the area came out more than
# `tolerance` off (lo, hi, tolerance). None: no calibration. Tune split, 48 cases each: resize
# x0.5 83 -> 92%, to an area 79 -> 85%, x2 85 -> 92%, move + resize + recolour 40 -> 54%.
RESIZE_CALIBRATION = (0.7, 1.4, 0.1)
LOCAL_BLEND_MARGIN = 1
# A script that moves or resizes an object it also restyles blends too (sampler/regions.py
# layout_blend): before the relocation, within the restyled object's mask grown by
# LAYOUT_BLEND_BEFORE_MARGIN cells; from it on, also within the vacated and the target regions
# grown by LAYOUT_BLEND_MARGIN. Tune split, move + resize + recolour, 48 cases: no blend 34;
# before-margin 1 / 2 / 3: 34 / 36 / 37 (no blend -> 3: area within 20% 73 -> 83%, within 0.1
# 81 -> 81%, colour taken 90 -> 85%);
# blending only from the relocation on: 33. With margin 1 before, the restyled object often
# vanished before the relocation (likely drifting as its new words redraw it, and cut; not shown);
# without any blend before, the other object was redrawn (twice, or grown). Tried on moves and
# resizes alone (the blend from the relocation on), tune split, 48 cases: move 46 -> 46, resize
# x1.5 47, keep appearance beside a move 45 -> 47; not made the default there, as every layout row
# would need measuring again on the report split.
LAYOUT_BLEND = True
LAYOUT_BLEND_MARGIN = 1
LAYOUT_BLEND_BEFORE_MARGIN = 3
# A removal carries its object's mask out of the image, grown by REMOVE_MARGIN latent cells: the
# map's mask (RELOCATE_MASK_THRESHOLD) covers the object's core, and the rim it left behind grew
# back into the object or a small one of its colour. Tune split, 24 cases each, margin 0 / 1 / 2:
# remove 71 / 88 / 83% (other kept 96 / 96 / 92%), remove (one object) 71 / 100 / 100%.
REMOVE_MARGIN = 1  # (sampler/regions.py plan_relocations)
# Tried for moves and resizes too, not taken: the same one-cell margin on every relocation, tune
# split, 24 cases each, margin 0 / 1 (2 on the first four): move 21 / 21 / 21, shift 19 / 23 / 22,
# resize x0.5 20 / 22 / 20, x2 20 / 20 / 20, x1.5 21 / 22, to an area 21 / 20, to the other's size
# 19 / 18, move beside 19 / 20, keep layout beside a move 21 / 21, keep appearance beside 21 / 20,
# move + resize + recolour 5 / 3, one-object move 22 / 24, resize x1.5 24 / 24: 253 -> 258 of 312,
# up on 7 tasks and down on 4, within the split's noise.
# Tried and dropped: Prompt-to-Prompt's cross-attention injection (the source's per-head
# probabilities in the edit's conditional rows for the first tau of the steps) beside the word
# swap of a recolour. On the shapes model it kept the colour from changing: recolour to a word,
# tune split, 16 cases, 69% without it, 19% at each of tau 0.8 / 0.4 / 0.2 (the object
# darkened or kept its colour); this model decides colour early and reads it from where the
# colour word is attended, which the injection freezes.
# Tried and dropped: Plug-and-Play's self-attention injection (Tumanyan et al. 2023: the source's
# queries and keys in the edit's attn1 layers for the first steps, the edit's values) beside a
# recolour's word swap and local blend. Recolour to a word, tune split, 16 cases, 12 of 16 without
# it; decoder layers for 30% / 60% of the steps: 12 / 12 (no image changed visibly); every attn1
# layer for 12% / 30% / 60%: 12 / 12 / 12 (one vanished triangle came back in place, two cases that
# were within 0.05 moved out); encoder and mid only, 30%: 11. Return steps (the source's own z_t at
# 0.5 or 0.7 of the way, then the swapped prompt) kept the old colour: this model has decided the
# colour by then.

# DragNoise (sampler/drag.py, energies/drag.py): Adam lr 0.01, at most 60 iterations (the UI's
# n_pix_step); tracking within r_p = 3; lambda = 0.1 on the region term. The patch radii are per
# backbone (BackboneDefaults). Distances are in pixels of the supervision feature map.
DRAG_LR = 0.01
DRAG_ITERATIONS = 60
DRAG_TRACK_RADIUS = 3
DRAG_STOP_PIXELS = 2.0  # DragDiffusion's check_handle_reach_target: within 2 px of the target
DRAG_REGION_WEIGHT = 0.1

# Move and resize also match a translated / scaled source silhouette (energies/attention.py);
# this is that term's share relative to the centroid / size term.
SILHOUETTE = 1.0
# Centroids of moves are taken on the soft-thresholded map, not the raw one (attention.object_centroid).
SHARP_CENTROID = True
SOFT_THRESHOLD_SHARPNESS = 10.0  # Self-Guidance demo: sigmoid(10 * (a - 0.5))


@dataclass(frozen=True)
class BackboneDefaults:
    """Where the attention energies read, per backbone family."""

    attn_layers: tuple[str, ...]  # module-name prefixes of the attn2 layers averaged into a map
    map_res: int  # maps are resized to map_res x map_res before averaging
    appearance_features: str  # module whose output is pooled under a token's mask
    drag_features: str  # decoder block whose output supervises a drag (DragNoise: the third, up_blocks[2] of SD)
    drag_scale: float  # the drag's feature map, as a fraction of the image side (DragNoise: half the image)
    drag_patch_radius: int = 1  # r_m of the motion supervision (DragNoise: 1)
    drag_track_patch: int = 0  # tracking compares (2r+1)^2 patches; 0: single features (DragDiffusion)
    mask_threshold: float = RELOCATE_MASK_THRESHOLD  # object masks from its maps: the cut (see RELOCATE_MASK_THRESHOLD)
    hold_layers: tuple[str, ...] | None = None  # the attn2 layers `keep attention` holds one by one (None: attn_layers)


BACKBONES = {
    # Shapes model, second generation (64 px images, 16x16 latents, grounding fine-tune): maps from
    # the decoder's 8x8 cross-attention (up_blocks.1), as SD's Self-Guidance reads its decoder; the
    # grounded decoder layers put 96-99% of a word's map inside its own object, the encoder's
    # 61-94% (t = 300). Tuned on the tune split, move task, 16 cases, copy-mask threshold 0.1:
    # within 0.1 on 16 (up_blocks.1) / 15 (every up block) / 5 (down blocks, at threshold 0.2) of
    # 16. Appearance pools the last decoder block.
    # Drag (tuned on the first generation, 32 px, and not yet re-tuned on the second):
    # up_blocks.1's output (64 ch at 32x32, the image's own resolution) is the shapes UNet's
    # counterpart of SD's up_blocks[2] (the second-to-last decoder stage at full latent resolution);
    # it is already at the image size, so no upsampling. Its features are local colour detectors:
    # inside a plain-coloured object every 3x3 patch looks alike, so r_m = 1 gives no motion signal
    # and single-feature tracking is fooled by a stretched object. Patches of radius 4 (9x9 px, about
    # an object) for both make the trailing edge part of the loss (tuned: within 0.1 on 4/8 seeds, r_m
    # = 1: 0/8, via latent, `within token`).
    # Keep attention holds the encoder's layers (16x16 and 8x8), not the decoder's: a forward for
    # the hold alone then ends halfway through the UNet, and its backward starts there (prompt
    # direction + keep attention 1.87x -> 1.38x plain, docs/performance.md, section 11). Tune split,
    # 48 cases a task, hold on up_blocks.1 / down_blocks / down_blocks + mid_block / down_blocks.1
    # (weight 3): direction red_to_green + keep attention 33 / 48 / 48 / 42%, circle_to_square_p2p
    # + keep attention 81 / 73 / 75 / 71% (stayed within 0.05 83 / 75 / 77 / 71%: the shape change
    # drifts a little more), recolour to a word 71 / 75 / - / 75%; down_blocks.1 at weight 6: 40 /
    # 62 / 73%. The mid block alone held nothing (red_to_green stayed 9%).
    "shapes": BackboneDefaults(attn_layers=("up_blocks.1",), map_res=16, appearance_features="up_blocks.2",
                               drag_features="up_blocks.1", drag_scale=1.0, drag_patch_radius=4, drag_track_patch=4,
                               hold_layers=("down_blocks",)),
    # SD 1.x/2.x at 512 px: the Self-Guidance demo reads the lowest-resolution decoder stage that
    # still has 1/32 of the image side (16x16 here: up_blocks.1); appearance pools up_blocks[-1].
    # Drag: DragNoise's own choice, up_blocks[2] (640x64x64 at 512 px) upsampled to half the image.
    "sd": BackboneDefaults(attn_layers=("up_blocks.1",), map_res=16, appearance_features="up_blocks.3",
                           drag_features="up_blocks.2", drag_scale=0.5),
    # SDXL at 1024 px: the demo's own layers, up_blocks.0.attentions.1 (32x32); appearance from
    # up_blocks[2], the final decoder block.
    # Drag: up_blocks[1] (640 ch, the 128x128 stage at 1024 px) is SD's up_blocks[2] by channel
    # count and resolution; a quarter of the image (256) keeps its upsampled map near DragNoise's size.
    "sdxl": BackboneDefaults(attn_layers=("up_blocks.0.attentions.1",), map_res=32, appearance_features="up_blocks.2",
                             drag_features="up_blocks.1", drag_scale=0.25),
    # Rectified-flow transformers (sampler/backbones/flow.py): the joint attention of the middle
    # third of the joint blocks (probes.joint_attention_layers: a documented default, unmeasured on
    # real SD3 and FLUX weights, which this machine has not; on the shapes flow model the middle
    # third was not the best, see below), maps at 32x32 (SD3 and FLUX at
    # 1024 px have 64x64 image tokens); appearance pools the last joint block's image stream.
    # No drag: DragNoise optimises a UNet's bottleneck, which a transformer does not have.
    "sd3": BackboneDefaults(attn_layers=("transformer_blocks",), map_res=32, appearance_features="transformer_blocks.-1",
                            drag_features="", drag_scale=0.0),
    "flux": BackboneDefaults(attn_layers=("transformer_blocks",), map_res=32, appearance_features="transformer_blocks.-1",
                             drag_features="", drag_scale=0.0),
    # The shapes flow model (grounding fine-tune, sampler/shapes/flow_ground.py): blocks 2, 4 and 5,
    # the three whose maps matched their objects best (mean IoU 0.60 / 0.57 / 0.60 over s = 0.3..0.9,
    # 0.32-0.47 for the others; `python -m sampler.shapes.flow_blocks --scenes 48 --at 0.3 0.5 0.7 0.9`).
    "shapes-flow": BackboneDefaults(attn_layers=("transformer_blocks.2", "transformer_blocks.4", "transformer_blocks.5"),
                                    map_res=16, appearance_features="transformer_blocks.-1",
                                    drag_features="", drag_scale=0.0,
                                    # its maps are less sharp than the grounded UNet's: at 0.1 a mask
                                    # covered most of the image; 0.5: resize x1.5 88% (0.3: 75%), tune split
                                    mask_threshold=0.5),
}

# Statements `steer bench` measured doing nothing on a backbone family: `steer check`, a run and
# the REPL say so at the statement (a warning, dsl/binding.py), so that silence is not read as
# success. Keys: a term kind, or "direction:KIND" for a learned direction of that kind. Values:
# (what was measured, what to use instead). Why each fails: docs/methods.md, sections 4 and 6.
_CLIP_SHAPES = ("`{label}` moves CLIP's score but not the colour on the {family} model "
                "(`steer bench`, clip recolour: colour taken on 0 of 48)",
                'recolour with appearance(token "...") -> "green", or learn a fine-tune with `steer learn clip`')
INEFFECTIVE = {
    "shapes": {
        "clip": _CLIP_SHAPES,
        "style": ("`{label}` does not carry the reference's colour on the {family} model "
                  "(`steer bench`, style image: colour taken on 0 of 48)",
                  'recolour with appearance(token "...") -> "green"'),
        "direction:hspace": ("`{label}` is an h-space direction, and the {family} model settles shape and colour after the "
                             "bottleneck (`steer bench`, circle_to_square within the object: 0 of 48 squares)",
                             "use a prompt direction with keep attention (`steer learn prompt`), or a fine-tune (`steer learn clip`)"),
    },
    "shapes-flow": {"clip": _CLIP_SHAPES},
}


# Words whose attention maps are too diffuse to stand for an object; "every object" terms skip them.
STOPWORDS = frozenset("a an the and of with on in at to by for is are this that its his her their".split())

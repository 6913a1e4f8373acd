"""Where an edit acts: relocations (a layout term's object copied to its target once) and the
regions of `within` terms.

A move, shift or resize first copies its object's source region in z_t to the target, at the
step D.RELOCATE_AT of sampling (energies/relocate.py); its attention energy then only holds it
there. A drag within a token copies its object along the drag at the drag's step. Objects that
nothing moves are protected from the copies. Masks come from the source pass's late attention
maps (SourcePass.object_mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import dsl
from energies import defaults as D
from energies import drag as G
from energies import relocate as R
from energies.terms import BoundTerm

from .guided import Guidance, after_move, pred_x0


def first_step_from(progress: float, steps: int) -> int:
    """The first of `steps` steps (step i is at progress i / steps) at or past `progress`: where a
    relocation or a settling made "at progress p" happens. Rounding to the nearest step instead put
    it before p at some step counts (4, 8, 14, 18, 24, 28 of them for 0.3), where a move, whose
    window starts at p, was not active yet and so was never relocated."""
    return min(steps - 1, math.ceil(progress * steps - 1e-9))


def plan_relocations(backbone, bound: list[BoundTerm], src, steps: int, prompt: str, drag_plan=None) -> dict[int, list]:
    """step -> [(mask, shift, scale, protect, own)]: where layout terms copy their object's source
    region, at the step D.RELOCATE_AT of sampling if the term is active then; and where drags
    within a token copy theirs, at the drag's step (sampler/drag.py). `own`: the object is also
    restyled (a recolour, an appearance transfer), so the copy is of the edit's own latent there,
    which already carries the new look, not of the source's."""
    at = first_step_from(D.RELOCATE_AT, steps)
    hw = backbone.latent_shape()[1:]
    plans: dict[int, list] = {}
    movers = [x for x in bound if x.kind in D.RELOCATE and x.active(at / steps) and x.weight > 0]
    copies = drag_plan.copies if drag_plan is not None else {}
    if not movers and not copies:
        return plans
    moved_tokens = {i for x in movers for i in x.token} | {i for token in copies for i in token}
    protect = staying_mask(backbone, src, prompt, moved_tokens)
    restyled = {i for x in bound if x.kind in D.LOCAL_BLEND and x.token and x.weight > 0 for i in x.token}
    for mask, shift in copies.values():
        plans.setdefault(drag_plan.step, []).append((mask, shift, 1.0, protect, False))
    by_object: dict[tuple, list[BoundTerm]] = {}  # a move and a resize of one object make one relocation
    for x in movers:
        by_object.setdefault(tuple(x.token), []).append(x)
    for token, terms in by_object.items():
        mask = src.object_mask(token, hw)
        if mask.sum() == 0:
            continue
        if any(x.kind == "remove" for x in terms):  # the map's mask misses the object's rim, which grows back
            mask = R.dilate(mask, D.REMOVE_MARGIN)
        centre = object_centre(src, token, hw, protect, mask)
        shift, scale = (0.0, 0.0), 1.0
        for x in terms:
            (dx, dy), k = moved_by(x, mask, centre)
            shift, scale = (shift[0] + dx, shift[1] + dy), scale * k
        plans.setdefault(at, []).append((mask.to(backbone.device), shift, scale, protect, bool(set(token) & restyled)))
    return plans


def staying_mask(backbone, src, prompt: str, changed: set[int]) -> torch.Tensor:
    """The latent cells of the prompt's objects that no statement moves or restyles (`changed`: their
    token positions): what a relocation or a settling must not write over."""
    hw = backbone.latent_shape()[1:]
    staying = [o.head for o in dsl.prompt_objects(prompt, backbone.tokenizer) if not set(o.tokens) & changed]
    return sum((src.object_mask(h, hw) for h in staying), torch.zeros(hw)).clamp(max=1).to(backbone.device)


def source_image(src) -> torch.Tensor:
    """The source pass's image as (3, H, W) in [0, 1], what pixel measures read."""
    return torch.from_numpy(src.image).permute(2, 0, 1).float()


def object_centre(src, token, hw, protect=None, mask=None) -> torch.Tensor:
    """(x, y) where the source has the object of `token`: with D.RELOCATE_CENTRE_IN_PIXELS, the
    centroid of its pixels in the source image (relocate.object_centre, within `mask`, its copy
    mask, or the map's mask at the backbone's threshold; that mask's own centroid where nothing
    stands out); otherwise the centre of its map's core (threshold D.RELOCATE_CENTRE_THRESHOLD),
    not of the generous copy mask."""
    mask = src.object_mask(token, hw) if mask is None else mask
    if D.RELOCATE_CENTRE_IN_PIXELS and mask.sum() > 0:
        return R.object_centre(source_image(src), mask.cpu(), None if protect is None else protect.cpu())
    core = src.object_mask(token, hw, D.RELOCATE_CENTRE_THRESHOLD)
    return R.centroid(core if core.sum() > 0 else mask)


def moved_by(x: BoundTerm, mask: torch.Tensor, centre: torch.Tensor | None = None) -> tuple[tuple[float, float], float]:
    """(shift, scale) a layout term asks of its object, given the object's source mask (or the
    `centre` measured for it, object_centre)."""
    c, k = (R.centroid(mask) if centre is None else centre), x.reach  # a weight below 1 goes part of the way
    if x.kind in ("move", "move_to"):
        to = x.term.to if x.kind == "move" else x.target
        return (k * float(to[0] - c[0]), k * float(to[1] - c[1])), 1.0
    if x.kind == "shift":
        return (k * float(x.term.by[0]), k * float(x.term.by[1])), 1.0
    if x.kind in ("resize", "size_like", "size_to"):
        return (0.0, 0.0), float(x.term.factor if x.kind == "resize" else x.factor) ** (0.5 * k)
    if x.kind == "remove":
        return (R.GONE, R.GONE), 1.0  # carried out of the image: only the refilled hole stays
    raise ValueError(f"{x.kind} terms do not relocate")


def resolve_relative(backbone, bound: list[BoundTerm], src):
    """Targets given relative to another object, made absolute from where the source has both:
    move_to's target (the other's centre + the offset); size_like's and size_to's factor (the
    other's area, or the script's, over the object's; areas counted in pixels, relocate.object_area)."""
    hw = backbone.latent_shape()[1:]
    for x in bound:
        if x.kind == "move_to":
            other = src.object_mask(x.other, hw)
            c = object_centre(src, x.other, hw, src.object_mask(x.token, hw), other) if other.sum() > 0 else torch.tensor([0.5, 0.5])
            x.target = (min(1.0, max(0.0, float(c[0]) + x.term.offset[0])), min(1.0, max(0.0, float(c[1]) + x.term.offset[1])))
        elif x.kind in ("size_like", "size_to"):  # area over area, both counted in the source image's pixels
            image = source_image(src)
            own = src.object_mask(x.token, hw)
            if own.sum() == 0:
                x.factor = 1.0
                continue
            if x.kind == "size_to":
                want = x.term.area
            else:
                other = src.object_mask(x.other, hw)
                want = R.object_area(image, other) if other.sum() > 0 else None
            have = R.object_area(image, own)
            x.factor = float(want / have) if want and have > 0 else 1.0


def codec_of(backbone):
    """(decode, encode) between one (C, h, w) latent and one (3, H, W) image in [0, 1], without a
    graph: what a relocation that scales its object uses to scale it in pixels."""

    @torch.no_grad()
    def decode(z):
        return backbone.decode(z[None])[0]

    @torch.no_grad()
    def encode(image):
        return backbone.encode(image[None])[0]

    return decode, encode


def relocating(guide, relocations: dict[int, list], src, alphas, codec=None, denoise=None):
    """The guide with the copies of `relocations` (step -> [(mask, shift, scale, protect)]) made
    first: at those steps z_t is moved (energies/relocate.py) and the guide runs at the moved z_t.
    `codec` (codec_of): resizes are made in pixels. `denoise(i, t, z)` (the edit's prediction):
    a resize is calibrated (calibrated_scale)."""

    def guide_(i, t, z):
        if i not in relocations:
            return guide(i, t, z) if guide is not None else Guidance()
        moved = z[0]
        a_t = alphas[t]
        for mask, shift, scale, protect, own in relocations[i]:
            z_from, x0_from = src.latents[i][0], src.x0s[i][0]
            if own:  # the edit's own object, noised as the source's: its x0 under the source's noise
                eps_src = (z_from - a_t.sqrt() * x0_from) / (1 - a_t).sqrt()
                z_from = moved
                x0_from = (z_from - (1 - a_t).sqrt() * eps_src) / a_t.sqrt()
            copy = R.relocate(moved, z_from, x0_from, a_t, mask, shift, scale, protect, codec)
            if scale != 1.0 and abs(shift[0]) < R.GONE and codec is not None and denoise is not None and D.RESIZE_CALIBRATION:
                k = calibrated_scale(copy, x0_from, mask, shift, scale, protect, a_t, codec, lambda z_: denoise(i, t, z_[None])[0])
                if k != 1.0:
                    copy = R.relocate(moved, z_from, x0_from, a_t, mask, shift, scale * k, protect, codec)
            moved = copy
        moved = moved[None]
        g = guide(i, t, moved) if guide is not None else Guidance()
        return after_move(g, z, moved)  # z_t <- z_t - latent: first the copy, then the guide's own step

    return guide_


def calibrated_scale(copy, x0_from, mask, shift, scale: float, protect, a_t, codec, denoise) -> float:
    """The factor that brings a resize's copy to the size it asks for. The copy scales the
    object's pixels but keeps the source's noise, which was drawn for the old size, and the
    model's first prediction from it took back part of the change: on the shapes model a halving
    of the area came out at 0.45-0.67 (tune split), and held there to the last step. So the
    copy's own prediction is read (one more model call), the object measured in it against the
    area the copy was to give it (relocate.target_pixels, settle_to), and the copy made again
    with its scale times sqrt(wanted / got), within D.RESIZE_CALIBRATION. 1 where nothing is found."""
    decode, _ = codec
    target = R.target_pixels(decode(x0_from).float(), mask, shift, scale, protect)
    if target is None:
        return 1.0
    want, look = target
    with torch.no_grad():
        image = decode(pred_x0(copy, denoise(copy), a_t)).float()
    found = R.settle_to(image, want, look, R.ring_width(mask, image))
    if found is None:
        return 1.0
    lo, hi, tolerance = D.RESIZE_CALIBRATION
    k = min(hi, max(lo, found[1]))
    return k if abs(k * k - 1) > tolerance else 1.0  # near enough: a second copy is a new drawing, not a free one


def settling(guide, backbone, bound: list[BoundTerm], src, steps: int, prompt: str, denoise):
    """The guide with each restyled object (a recolour, an appearance or shape transfer, a learned
    direction `within` its token) put back
    where the source has it, once, at the step D.SETTLE_AT: the edit's prompt draws the object
    anew from the same noise, and on the shapes model it came out shifted by 0.05-0.3 and 0.5-1.5x
    as large on a third of recolours, a drift fixed within the first few steps and kept to the end
    (docs/methods.md). Its predicted x0 there and the source's are decoded; within the object's
    source region the pixels that stand out from the background say where each has it
    (relocate.settle); the edit's object is moved and scaled in pixels to the source's place and
    size (shape transfers and directions: moved only) and z_t is rebuilt there from that x0 and the edit's noise.
    `denoise(i, t, z)`: the edit's own prediction (its x0 is read from it, not from the source's
    noise: at that step a small difference in the noise is a large one in x0).
    Returns the guide unchanged where the script restyles nothing."""
    restyled = [x for x in bound if x.kind in D.SETTLE and x.token and x.weight > 0]
    # each object once; a shape swap's own word swap is a recolour of the same token, and a new
    # silhouette is not the old one's size, so an object whose shape changes is moved only; so is
    # one a learned direction acts on `within` (its change may be a size: `smaller`)
    objects = {tuple(x.token): True for x in restyled}
    for x in restyled:
        if x.kind in ("shape_from", "direction"):
            objects[tuple(x.token)] = False
    if not objects:
        return guide
    at = first_step_from(D.SETTLE_AT, steps)
    hw = backbone.latent_shape()[1:]
    a_bar = backbone.schedule()[0]
    decode, encode = codec_of(backbone)
    protect = staying_mask(backbone, src, prompt, {i for t in objects for i in t})

    def guide_(i, t, z):
        if i != at:
            return guide(i, t, z) if guide is not None else Guidance()
        a_t = a_bar[t]
        with torch.no_grad():
            eps = denoise(i, t, z)[0]
        x0 = pred_x0(z[0], eps, a_t)
        image, source = decode(x0).float(), decode(src.x0s[i][0]).float()
        touched = torch.zeros(image.shape[-2:], device=image.device)
        for token, scale_too in objects.items():
            region = R.dilate(src.object_mask(list(token), hw), D.LOCAL_BLEND_MARGIN + 1) * (protect < 0.5)
            found = R.settle(image, source, region, scale_too)
            if found is None:
                continue
            shift, scale, pixels = found
            if max(abs(shift[0]), abs(shift[1])) * image.shape[-1] < D.SETTLE_MIN_PIXELS and abs(scale - 1) < D.SETTLE_MIN_SCALE:
                continue
            image, where = R.moved_in_pixels(image, pixels, shift, scale)
            touched = torch.maximum(touched, where)
        if touched.sum() == 0:
            return guide(i, t, z) if guide is not None else Guidance()
        cells = F.adaptive_max_pool2d(touched[None, None], tuple(hw))[0, 0] > 0.5
        settled = torch.where(cells[None], a_t.sqrt() * encode(image.clamp(0, 1)).to(z) + (1 - a_t).sqrt() * eps, z[0])[None]
        g = guide(i, t, settled) if guide is not None else Guidance()
        return after_move(g, z, settled)

    return guide_


def local_blend(backbone, bound: list[BoundTerm], src):
    """Prompt-to-Prompt's local blend (Hertz et al. 2022, section 3.3) for scripts whose every
    change is local and leaves layout alone (recolours, appearance transfers, directions `within`
    a token or box; keeps beside them): after every step, outside the changed regions (the
    objects' source masks and LOCAL_BLEND_MARGIN latent cells around them; a box itself) the
    latent is the source trajectory's own, so nothing else changes and the object cannot drift.
    Returns (i, z after step i) -> the blended z, or None where the script has nothing to blend."""
    regions = restyled_regions(backbone, bound, src, D.LOCAL_BLEND_MARGIN)
    if not regions:
        return None  # a change that is not local (a layout statement, a global direction, a CLIP or style term), or none
    region = torch.stack(regions).amax(0)
    if region.sum() == 0:
        return None
    return blended_with_source(src, lambda i: region)


def layout_blend(backbone, bound: list[BoundTerm], src, relocations: dict[int, list]):
    """The local blend (local_blend) for scripts that move or resize an object they also restyle
    (`appearance(token "circle") -> "green"` beside a move and a resize of the circle). Before the
    relocation step the changed regions are the restyled objects' source masks grown by
    D.LAYOUT_BLEND_BEFORE_MARGIN cells; from it on, also each relocated object's region (which it
    vacates) and its target (the region moved and scaled as the copy moves it, at the largest scale
    a calibration may give it), grown by D.LAYOUT_BLEND_MARGIN. Outside them the latent is the source
    trajectory's: the edit prompt, with its new words, cannot redraw the rest of the scene (the other
    object drawn twice, or grown). None where the script has a change that is neither local nor a
    relocation (a global direction, a CLIP or style term, a drag), or restyles no object it moves."""
    if not D.LAYOUT_BLEND or len(relocations) != 1:
        return None
    (at, copies), = relocations.items()
    if not any(own for *_, own in copies):
        return None
    restyled = restyled_regions(backbone, bound, src, D.LAYOUT_BLEND_BEFORE_MARGIN, relocated=True)
    if restyled is None:
        return None
    moved = []
    for mask, shift, scale, protect, _ in copies:
        _, region, about, _ = R.relocated_region(mask.to(backbone.device), protect)
        widest = scale * D.RESIZE_CALIBRATION[1] if scale != 1.0 and D.RESIZE_CALIBRATION else scale
        moved += [R.dilate(region, D.LAYOUT_BLEND_MARGIN),
                  R.dilate(R.transform(region[None], shift, widest, about)[0], D.LAYOUT_BLEND_MARGIN)]
    before = torch.stack(restyled).amax(0)  # not empty: an `own` copy is of a restyled object
    after = torch.stack([before, *moved]).amax(0)
    return blended_with_source(src, lambda i: after if i >= at else before)


def restyled_regions(backbone, bound: list[BoundTerm], src, margin: int, relocated: bool = False) -> list | None:
    """The (H, W) latent region of each change a blend keeps local: a restyled object's source mask
    grown by `margin` cells, a direction's `within` region. None where a change is not local (with
    `relocated`, moves, resizes and removals are passed over: their regions come from their copies)."""
    hw = backbone.latent_shape()[1:]
    regions = []
    for x in bound:
        if x.kind.startswith("keep") or x.weight == 0 or (relocated and x.kind in D.RELOCATE and x.token):
            continue
        if x.kind in D.LOCAL_BLEND and x.token:
            regions.append(R.dilate(src.object_mask(x.token, hw), margin).to(backbone.device))
        elif x.kind == "direction" and (x.token or x.term.box is not None):
            regions.append(within_regions(backbone, [x], src)[id(x)])
        else:
            return None
    return regions


def blended_with_source(src, region_at):
    """(i, z after step i) -> z within `region_at(i)` (an (H, W) mask), the source trajectory's own
    z after the same step outside it."""
    after = list(src.latents[1:]) + [src.final]  # the source's z after each of its steps

    def blend(i, z):
        region = region_at(i)
        return region * z + (1 - region) * after[i]

    return blend


def within_regions(backbone, terms: list[BoundTerm], src) -> dict[int, torch.Tensor | None]:
    """id(term) -> the (H, W) latent mask a `within` term acts in (its object from the source's
    late attention maps, dilated by a pixel; or its box), or None where it acts everywhere."""
    hw = tuple(backbone.latent_shape()[1:])
    out: dict[int, torch.Tensor | None] = {}
    for x in terms:
        mask = None
        if x.term.box is not None:
            mask = G.box_mask(x.term.box, hw)
        elif x.token:
            mask = R.dilate(src.object_mask(x.token, hw), 1)
        out[id(x)] = None if mask is None else mask.to(backbone.device)
    return out


def local(shift: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A direction's shift (..., h, w) kept inside `mask` (H, W), resized to the shift's grid (a
    cell of a coarser grid counts if any of it is inside: h-space is 8x8 on the shapes model)."""
    if mask is None:
        return shift
    size = tuple(shift.shape[-2:])
    m = mask if tuple(mask.shape) == size else torch.nn.functional.adaptive_max_pool2d(mask[None, None], size)[0, 0]
    return shift * m.to(shift)

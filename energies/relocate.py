"""Relocation: carry an object's region of the source latent to where a layout term wants it.

An attention energy alone asks the model to put *attention* at the target; on a small model it is
cheaper to draw a second object there than to move the first (the feasibility run's failure, and
ours). So a layout term (move, shift, resize) also relocates, once, early in sampling: the region
under the object's source mask is copied from the source trajectory's z_t to its new place, and
the region it left is refilled with background at the same noise level. The denoiser then has an
image whose layout already says "the object is there" and spends the remaining steps blending it;
the term's attention energy keeps it there. This is the latent copy of DragonDiffusion and
DiffEditor (docs/methods.md, section 9), driven by the term's own target instead of a drawn box.

Pure tensor functions; latents are (C, H, W) here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import centroid, minmax, resize


SCALE_MARGIN = 1  # latent cells around the copy mask that a resize scales with the object
GONE = 4.0  # a shift (image units) that carries a region out of the image: what `remove` relocates by


def object_mask(maps: list[torch.Tensor], hw, threshold: float = 0.5) -> torch.Tensor:
    """A token's object mask from the source pass: its maps over the last steps averaged (where
    they localise best), normalised, thresholded, resized to the latent (H, W). Float 0/1."""
    m = minmax(torch.stack(maps).mean(0))
    return (resize(m, hw) > threshold).float()


def transform(x: torch.Tensor, shift=(0.0, 0.0), scale: float = 1.0, about=(0.5, 0.5), mode: str = "nearest") -> torch.Tensor:
    """Move (C, H, W) by `shift` (image units) and scale by `scale` about `about`, nearest
    sampling: values are carried, never blended, so noise keeps its statistics (`mode`
    "bilinear" for images, whose values may be blended). Zeros outside."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, dtype=torch.float32, device=x.device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=x.device) + 0.5) / w
    src_x = about[0] + (xs - about[0] - shift[0]) / scale
    src_y = about[1] + (ys - about[1] - shift[1]) / scale
    gy, gx = torch.meshgrid(src_y * 2 - 1, src_x * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].to(x.dtype)
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] if r > 0 else mask


def background(x0: torch.Tensor, mask: torch.Tensor, ring: int = 2) -> torch.Tensor:
    """(C,) the median predicted-x0 value on a ring just outside the mask: what the hole an
    object leaves should become. Falls back to the whole outside when the ring is empty."""
    outer = dilate(mask, ring) - dilate(mask, 0)
    sel = outer > 0.5 if outer.sum() > 0 else mask < 0.5
    if sel.sum() == 0:
        return x0.flatten(1).median(1).values
    return x0[:, sel].median(1).values


def relocate(z: torch.Tensor, z_src: torch.Tensor, x0_src: torch.Tensor, a_t, mask: torch.Tensor,
             shift=(0.0, 0.0), scale: float = 1.0, protect: torch.Tensor | None = None, codec=None) -> torch.Tensor:
    """The latent z with the source object moved: z_src under `mask`, shifted by `shift` and
    scaled by `scale` about the mask's centroid, pasted over z; the vacated region refilled with
    the background x0 noised with the source's own noise at this step (so the noise level and
    seed-noise there stay what the sampler expects). Pixels under `protect` (the objects the edit
    does not move) are left alone: a moved object goes behind them, never over them, and none of
    them is carried along (a generous mask that reaches into a neighbour copies none of it).

    A scale other than 1 is made in pixels when `codec` ((decode, encode) between a (C, h, w)
    latent and a (3, H, W) image in [0, 1]) is given: scaling a few latent cells (an object of
    the shapes model spans four) by nearest sampling changes nothing at 1.2, and scaled noise is
    no longer white noise (scaled_in_pixels). The region scaled is the mask and SCALE_MARGIN cells
    around it, so that a shrunk object leaves no rim for the model to regrow it from."""
    a_t = torch.as_tensor(a_t, dtype=z.dtype, device=z.device)
    mask, region, about, free = relocated_region(mask, protect)
    eps_src = (z_src - a_t.sqrt() * x0_src) / (1 - a_t).sqrt()
    if codec is not None and (scale != 1.0 or not whole_cells(shift, mask.shape[-2:])):
        x0_new, cells = scaled_in_pixels(x0_src, region, shift, scale, about, codec)
        noise = torch.where(cells[None] > 0.5, transform(eps_src, shift, 1.0, about), eps_src)
        return torch.where((torch.maximum(region, cells) * free)[None] > 0.5, a_t.sqrt() * x0_new + (1 - a_t).sqrt() * noise, z)
    bg = background(x0_src, mask).view(-1, 1, 1)
    hole = a_t.sqrt() * bg + (1 - a_t).sqrt() * eps_src
    out = torch.where(mask[None] > 0.5, hole, z)
    moved = transform(z_src, shift, scale, about)
    moved_mask = transform(mask[None], shift, scale, about)[0]
    return torch.where((moved_mask * free)[None] > 0.5, moved, out)


def whole_cells(shift, hw, tolerance: float = 0.05) -> bool:
    """Whether `shift` (image units) moves by a whole number of latent cells (within `tolerance` of
    a cell), which a copy of latent cells makes exactly; a shift off the grid is made in pixels
    when a codec is given (relocate), and by nearest cells otherwise. A shift that carries the
    region out of the image (GONE) counts as whole: nothing of it lands."""
    if max(abs(shift[0]), abs(shift[1])) >= GONE:
        return True
    cells = (shift[0] * hw[-1], shift[1] * hw[-2])
    return all(abs(c - round(c)) <= tolerance for c in cells)


def object_centre(image: torch.Tensor, mask: torch.Tensor, protect: torch.Tensor | None = None,
                  distance: float = 0.25) -> torch.Tensor:
    """(x, y) of the object under a latent `mask`, measured in pixels of `image` (3, H, W) in
    [0, 1]: the centroid of the pixels that stand out from the background within the mask and
    SCALE_MARGIN cells around it, less the cells under `protect` (the other objects). A map's
    thresholded cells place an object to a cell (a sixteenth of the shapes model's image); its
    pixels place it to a pixel. The mask's own centroid where nothing stands out."""
    free = torch.ones_like(mask) if protect is None else (protect < 0.5).to(mask.dtype)
    region = _in_pixels(dilate(mask.float(), SCALE_MARGIN) * free, image)
    found = standing_out(image, region, ring_width(mask, image), distance)
    return centroid(found) if found is not None else centroid(mask.float())


def relocated_region(mask: torch.Tensor, protect: torch.Tensor | None = None):
    """(mask, region, about, free) of a relocation: the mask less the cells under `protect`, the
    region a resize scales (the whole object, not its map's core: the mask and SCALE_MARGIN cells
    around it, within the free cells), the centre it moves and scales about, and the free cells."""
    free = torch.ones_like(mask) if protect is None else (protect < 0.5).to(mask.dtype)
    mask = mask * free
    return mask, dilate(mask, SCALE_MARGIN) * free, tuple(float(v) for v in centroid(mask)), free


def scaled_in_pixels(x0_src, mask, shift, scale, about, codec) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 latent, latent mask) of the object under `mask` scaled and shifted in pixels: the
    source's predicted image decoded, the region painted out with the colour of the ring around
    it, the region's pixels resampled (bilinear) over it, encoded back. The mask holds every
    latent cell the scaled region touches. The caller noises it with the source's noise (shifted,
    never scaled, so that it stays white)."""
    decode, encode = codec
    composite, obj_mask = scaled_image(decode(x0_src).float(), mask, shift, scale, about)
    cells = F.adaptive_max_pool2d(obj_mask[None, None].float(), mask.shape[-2:])[0, 0].to(mask)
    return encode(composite.clamp(0, 1)).to(x0_src), cells


def scaled_image(image: torch.Tensor, mask: torch.Tensor, shift, scale: float, about) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, its pixels the scaled region covers): the region under the latent `mask` painted
    out with the colour of the ring around it and its pixels resampled (bilinear), shifted and
    scaled about `about`, over that."""
    m_px = _in_pixels(mask, image)
    painted = torch.where(m_px[None] > 0.5, background(image, m_px, ring_width(mask, image)).view(-1, 1, 1), image)
    obj = transform(image, shift, scale, about, mode="bilinear")
    obj_mask = transform(m_px[None], shift, scale, about, mode="bilinear")[0] > 0.5
    return torch.where(obj_mask[None], obj, painted), obj_mask


def object_area(image: torch.Tensor, mask: torch.Tensor, distance: float = 0.25) -> float:
    """The area (fraction of the image) of the object under a latent `mask`, counted in pixels of
    `image` (3, H, W) in [0, 1]: within the mask and SCALE_MARGIN cells around it, the pixels whose
    colour is farther than `distance` from the ring around that region (its background). A map's
    thresholded cells say where an object is, not how big: on the shapes model a 0.1-threshold mask
    covers about 60% of a square. Falls back to the mask's own share where nothing stands out."""
    region = _in_pixels(dilate(mask.float(), SCALE_MARGIN), image)
    found = standing_out(image, region, ring_width(mask, image), distance)
    return float(found.mean()) if found is not None else float(mask.float().mean())


def standing_out(image: torch.Tensor, region: torch.Tensor, ring: int, distance: float = 0.25) -> torch.Tensor | None:
    """(H, W) float mask of the pixels of `region` (a pixel mask) whose colour is farther than
    `distance` from the background (the colour of a `ring`-pixel band around the region), or None
    where the band is empty or nothing stands out."""
    if (dilate(region, ring) - region).sum() == 0:
        return None
    bg = background(image, region, ring).view(-1, 1, 1)
    fg = ((image - bg).norm(dim=0) > distance) & (region > 0.5)
    return fg.float() if fg.any() else None


def settle(image: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, scale_too: bool = True,
           distance: float = 0.25) -> tuple[tuple[float, float], float, torch.Tensor] | None:
    """How to put the object under a latent `mask` of `image` back where and as large as `source`
    has it: (shift, scale, its pixels in `image`), both images (3, H, W) in [0, 1], measured on the
    pixels that stand out from the region's background (standing_out). Scale 1 unless `scale_too`
    (an object whose shape changes may change its area). None where either image shows nothing there."""
    region = _in_pixels(mask.float(), image)
    ring = ring_width(mask, image)
    want = standing_out(source, region, ring, distance)
    return settle_to(image, want, region, ring, scale_too, distance) if want is not None else None


def settle_to(image: torch.Tensor, want: torch.Tensor, region: torch.Tensor, ring: int, scale_too: bool = True,
              distance: float = 0.25) -> tuple[tuple[float, float], float, torch.Tensor] | None:
    """(shift, scale, its pixels) that put the object standing out within the pixel mask `region`
    of `image` onto the pixels `want` (an (H, W) mask): centre on centre, area on area (scale 1
    unless `scale_too`). None where nothing stands out there."""
    have = standing_out(image, region, ring, distance)
    if have is None or want.sum() == 0:
        return None
    shift = tuple(float(v) for v in centroid(want) - centroid(have))
    scale = float((want.sum() / have.sum()).sqrt()) if scale_too else 1.0
    return shift, scale, have


def target_pixels(source: torch.Tensor, mask: torch.Tensor, shift, scale: float, protect: torch.Tensor | None = None,
                  distance: float = 0.25) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Where a relocation (mask, shift, scale, protect, as relocate() takes them) puts the object of
    `source` (3, H, W), measured as an edit's prediction would be: (the pixels that stand out in
    the image the copy pastes, the pixel region to look in: the scaled region and one latent cell
    around it, less the protected cells). None where nothing stands out."""
    mask, region, about, free = relocated_region(mask, protect)
    pasted, covered = scaled_image(source, region, shift, scale, about)
    ring = ring_width(mask, source)
    look = dilate(covered.float(), ring) * _in_pixels(free, source)
    want = standing_out(pasted, look, ring, distance)
    return (want, look) if want is not None else None


def moved_in_pixels(image: torch.Tensor, pixels: torch.Tensor, shift, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`image` (3, H, W) with the object on `pixels` (an (H, W) mask) shifted and scaled about its
    centroid: its old place (and a pixel around it, the anti-aliased rim) painted with the colour
    around it, the object resampled (bilinear) over that. Returns (image, pixels it touched)."""
    about = tuple(float(v) for v in centroid(pixels))
    rim = dilate(pixels, 1)
    painted = torch.where(rim[None] > 0.5, background(image, rim, 2).view(-1, 1, 1), image)
    obj = transform(image, shift, scale, about, mode="bilinear")
    obj_mask = transform(rim[None], shift, scale, about, mode="bilinear")[0]
    inside = transform(pixels[None], shift, scale, about, mode="bilinear")[0] > 0.5
    out = torch.where(inside[None], obj, painted)
    return out, torch.maximum(rim, (obj_mask > 0).float())


def _in_pixels(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A latent (h, w) mask at the image's (H, W), each cell its block of pixels."""
    return F.interpolate(mask[None, None].float(), size=tuple(image.shape[-2:]), mode="nearest")[0, 0].to(image.device)


def ring_width(mask: torch.Tensor, image: torch.Tensor) -> int:
    """The width, in pixels, of one latent cell: the ring whose colour is a region's background."""
    return max(1, image.shape[-2] // mask.shape[-1])

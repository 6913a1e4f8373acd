"""Pictures of an edit: DAAM-style heat maps of its words, and a one-page sheet of the run.

- maps_grid: one row per word, one column per (image, sampling fraction), each tile the word's
  heat map (result.token_map) over the source or the edited image; a first row shows the images
  themselves. Drawn with PIL, so its size is exact: a test, or a page, can rely on it.
- sheet: the source and the edit side by side, the maps of the tokens the script names, and the
  energy curve of every statement; drawn with matplotlib (its Agg canvas, no window, no pyplot
  state shared with a caller's figures).
Small images (the shapes model's 32 px) are enlarged by whole factors without blur, so a pixel
stays a pixel. Both are written as PNGs with the program in them (images.write_png), which is
what lets a later run replace them (preflight.written_by_steer).
"""

from __future__ import annotations

import numpy as np

import dsl

from .images import write_png

TILE_SIDE = 128  # images smaller than this are enlarged to at least it, by a whole factor
LABEL_HEIGHT = 14  # px of the label strip above each tile
HEAT_ALPHA = 0.6  # how much of a tile is the heat map, the rest the image under it (DAAM's overlay)
COLOURMAP = "jet"  # DAAM's and the attention-map literature's


def enlarged(image: np.ndarray, side: int = TILE_SIDE) -> np.ndarray:
    """(H, W, ...) repeated by the smallest whole factor that makes its shorter side >= `side`
    (nearest-neighbour: no blur on a 32 px image)."""
    k = max(1, -(-side // min(image.shape[:2])))
    return image.repeat(k, axis=0).repeat(k, axis=1)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map (H, W) in [0, 1], coloured, over the image (H, W, 3) in [0, 1]."""
    from matplotlib import colormaps

    coloured = colormaps[COLOURMAP](heat)[..., :3]
    return (1 - HEAT_ALPHA) * image + HEAT_ALPHA * coloured


def fraction_label(at) -> str:
    """How a column names the steps its maps average: "all steps", "@0.3", "0.5..1"."""
    if at is None:
        return "all steps"
    if isinstance(at, (int, float)):
        return f"@{at:g}"
    return f"{at[0]:g}..{at[1]:g}"


def prompt_words(result) -> list[str]:
    """Every word of the prompt but the stop words ("a", "and"), whose maps say nothing."""
    from energies.defaults import STOPWORDS

    words = dsl.prompt_words(result.program.settings.prompt)
    return [w for w in words if w.split("#")[0] not in STOPWORDS] or words


def named_words(program) -> list[str]:
    """The tokens the script's statements name, in order, each once ("circle", "red#2")."""
    out = []
    for term in program.terms:
        for ref in term.tokens():
            out.append(ref.word if ref.occurrence == 1 else f"{ref.word}#{ref.occurrence}")
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------
# The maps grid (PIL)


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """An enlarged image with its label in a white strip above it: (LABEL_HEIGHT + h, w, 3) uint8."""
    from PIL import Image, ImageDraw

    big = (np.clip(enlarged(image), 0, 1) * 255).round().astype(np.uint8)
    strip = Image.new("RGB", (big.shape[1], LABEL_HEIGHT), "white")
    ImageDraw.Draw(strip).text((2, 1), label, fill="black")
    return np.concatenate([np.asarray(strip), big], axis=0)


def maps_grid(result, words: list[str] | None = None, at: list | None = None) -> np.ndarray:
    """(H, W, 3) in [0, 1]: a header row with the source and the edited image, then one row per
    word (default: every prompt word but stop words) with its heat map over the source, then over
    the edit, at each sampling fraction of `at` (default: averaged over all steps, DAAM's)."""
    words = words or prompt_words(result)
    fractions = at or [None]
    columns = [(kind, f) for kind in ("source", "edit") for f in fractions]
    pictures = {"source": result.source_image, "edit": result.image}
    rows = [[_tile(pictures[kind], f"{kind} {fraction_label(f)}") for kind, f in columns]]
    for word in words:
        rows.append([_tile(overlay(pictures[kind], result.token_map(word, at=f, image=kind)), word) for kind, f in columns])
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0).astype(np.float32) / 255


def grid_size(image_hw: tuple[int, int], words: int, fractions: int) -> tuple[int, int]:
    """(height, width) in px of a maps grid: what maps_grid makes, stated as arithmetic."""
    k = max(1, -(-TILE_SIDE // min(image_hw)))
    h, w = image_hw[0] * k, image_hw[1] * k
    return (1 + words) * (LABEL_HEIGHT + h), 2 * fractions * w


def save_maps(result, path, words: list[str] | None = None, at: list | None = None):
    write_png(maps_grid(result, words, at), path, {**result.record(), "steer:image": "maps"})


# ------------------------------------------------------------------------------------------------
# The sheet (matplotlib)


def sheet(result, words: list[str] | None = None, at=None) -> np.ndarray:
    """(H, W, 3) in [0, 1]: source | edit, the maps of `words` (default: the tokens the script
    names, else every prompt word) over each, and every statement's energy per step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    words = words or named_words(result.program) or prompt_words(result)
    cols = max(2, 2 * len(words))
    fig = Figure(figsize=(max(6.0, 1.6 * cols), 3.2 + 1.9 + 2.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, cols, height_ratios=[3.2, 1.9, 2.6])
    half = cols // 2
    for span, picture, title in ((slice(0, half), result.source_image, "source"), (slice(half, cols), result.image, "edit")):
        _show(fig.add_subplot(grid[0, span]), enlarged(picture), title)
    for n, word in enumerate(words):
        for k, (kind, picture) in enumerate((("source", result.source_image), ("edit", result.image))):
            heat = overlay(picture, result.token_map(word, at=at, image=kind))
            _show(fig.add_subplot(grid[1, 2 * n + k]), enlarged(heat), f'"{word}" {kind}', size=8)
    _curves(fig.add_subplot(grid[2, :]), result.energies, result.steps)
    fig.suptitle(f"{result.program.settings.prompt}  (maps: {fraction_label(at)})", fontsize=10)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255


def _show(ax, image: np.ndarray, title: str, size: int = 10):
    ax.imshow(np.clip(image, 0, 1), interpolation="nearest")  # already enlarged: no smoothing on top
    ax.set_title(title, fontsize=size)
    ax.set_axis_off()


def _curves(ax, energies: dict[str, list[tuple[int, float]]], steps: int):
    """One line per statement, energy against step; a statement outside its window has no points there."""
    drawn = False
    for label, points in energies.items():
        if points:
            x, y = zip(*points)
            ax.plot(x, y, marker=".", label=label)
            drawn = True
    ax.set_xlim(0, max(steps - 1, 1))
    ax.set_xlabel("step")
    ax.set_ylabel("energy")
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no statement has an energy", ha="center", va="center", transform=ax.transAxes)


def save_sheet(result, path, words: list[str] | None = None, at=None):
    write_png(sheet(result, words, at), path, {**result.record(), "steer:image": "sheet"})


# ------------------------------------------------------------------------------------------------
# The batch grid (PIL)


def labelled_grid(tiles: list[tuple[np.ndarray, str]], columns: int) -> np.ndarray:
    """(H, W, 3) in [0, 1]: each (image, label) as a tile (enlarged without blur, its label in a
    strip above, cut to the tile's width), `columns` tiles a row, left to right and then down; a
    short last row is filled with white. The images are of one size (one model's)."""
    if not tiles:
        raise ValueError("a grid needs at least one image")
    made = [_tile(image, _fitted(label, enlarged(image).shape[1])) for image, label in tiles]
    blank = np.full_like(made[0], 255)
    made += [blank] * (-len(made) % columns)
    rows = [np.concatenate(made[i:i + columns], axis=1) for i in range(0, len(made), columns)]
    return np.concatenate(rows, axis=0).astype(np.float32) / 255


def _fitted(label: str, width: int) -> str:
    """`label` as _tile writes it, cut short with "..." where it would run past `width` px."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    room = width - 4  # _tile writes from x = 2
    if draw.textlength(label) <= room:
        return label
    while label and draw.textlength(label + "...") > room:
        label = label[:-1]
    return label + "..."

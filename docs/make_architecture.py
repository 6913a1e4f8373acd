"""Draw docs/images/architecture.png: steer's data path from text to pixels, by layer.

    python docs/make_architecture.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent / "images" / "architecture.png"
W, H = 1400, 820
LAYERS = [  # (name, colour, top, bottom)
    ("tools: steer (dsl/cli.py), REPL, sampler/bench/, sampler/learn/, shapes trainer", (235, 235, 235), 20, 110),
    ("the language: dsl/", (222, 235, 250), 130, 330),
    ("the engine: sampler/", (226, 245, 226), 350, 700),
    ("energies/: the Program, terms and their energies (tensor math)   +   errors, atomic write", (250, 240, 220), 720, 800),
]
# (label, sub-label, x, y): the data path, left to right, top to bottom
BOXES = {
    "text": ("script / REPL / Python", ".edit text, builder", 40, 180),
    "parse": ("dsl.parse", "grammar.lark, parser.py", 320, 180),
    "compile": ("dsl.compile", "compiler.py -> Program", 600, 180),
    "bind": ("dsl.bind", "binding.py, resolve.py", 880, 180),
    "format": ("dsl.format", "printer.py: Program -> text", 320, 260),
    "editor": ("Editor.run", "editor.py", 40, 400),
    "source": ("source pass", "source.py, inversion_cache.py", 320, 400),
    "loop": ("guided DDIM loop", "guided.py, denoiser.py", 600, 400),
    "result": ("EditResult", "result.py: PNG + program", 1140, 400),
    "regions": ("relocation", "regions.py", 320, 540),
    "guidance": ("energy guidance", "guidance.py, probes.py", 600, 540),
    "directions": ("direction kinds", "directions/*.py", 880, 540),
    "backbone": ("Backbone", "backbones/ (shapes, SD, SDXL)", 1140, 540),
    "drag": ("drag", "drag.py", 320, 620),
    "features": ("ViT / CLIP", "feature_models.py", 600, 620),
}
ARROWS = [("text", "parse"), ("parse", "compile"), ("compile", "bind"), ("compile", "format"), ("bind", "editor"),
          ("editor", "source"), ("source", "loop"), ("loop", "result"), ("loop", "regions"), ("loop", "guidance"),
          ("loop", "directions"), ("loop", "backbone"), ("guidance", "features"), ("regions", "drag")]
BW, BH = 240, 56


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def main():
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    big, small = font(19), font(14)
    for name, colour, top, bottom in LAYERS:
        d.rounded_rectangle((10, top, W - 10, bottom), 12, fill=colour, outline=(180, 180, 180))
        d.text((24, top + 6), name, fill=(90, 90, 90), font=small)
    centre = {}
    for key, (label, sub, x, y) in BOXES.items():
        d.rounded_rectangle((x, y, x + BW, y + BH), 8, fill="white", outline=(60, 60, 60), width=2)
        d.text((x + 10, y + 6), label, fill="black", font=big)
        d.text((x + 10, y + 32), sub, fill=(80, 80, 80), font=small)
        centre[key] = (x + BW / 2, y + BH / 2, x, y)
    for a, b in ARROWS:
        ax, ay, axl, ayt = centre[a]
        bx, by, bxl, byt = centre[b]
        if abs(ay - by) < 40:  # side by side: from the right edge to the left edge
            start, end = (axl + BW, ay), (bxl, by) if bx > ax else (bxl + BW, by)
        else:  # above / below
            start = (ax, ayt + BH) if by > ay else (ax, ayt)
            end = (bx, byt) if by > ay else (bx, byt + BH)
        d.line((*start, *end), fill=(40, 40, 40), width=2)
        ex, ey = end
        sx, sy = start
        import math

        ang = math.atan2(ey - sy, ex - sx)
        for da in (2.6, -2.6):
            d.line((ex, ey, ex + 12 * math.cos(ang + da), ey + 12 * math.sin(ang + da)), fill=(40, 40, 40), width=2)
    d.text((1135, 188), "-> bound terms,", fill=(60, 60, 60), font=small)
    d.text((1135, 208), "against a tokenizer", fill=(60, 60, 60), font=small)
    d.text((40, 470), "Program + bound terms:", fill=(60, 60, 60), font=small)
    d.text((40, 488), "weight, window, placement, tokens", fill=(60, 60, 60), font=small)
    d.text((24, 40), "steer run | check | fmt | repl | directions | bench | learn      python -m sampler.shapes.train | evaluate", fill="black", font=big)
    d.text((24, 72), "each drives the layers below; none is imported by them", fill=(80, 80, 80), font=small)
    d.text((24, 742), "program.py  builder.py  terms.py (NEEDS, ENERGIES)  attention.py  vit.py  x0.py  drag.py  relocate.py  "
           "defaults.py  directions.py (file format)  errors.py  files.py", fill="black", font=small)
    d.text((24, 766), "no model, no text: what the engine and the language share", fill=(80, 80, 80), font=small)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    im.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

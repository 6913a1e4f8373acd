from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsl
from energies import appearance, centroid, direction, keep, shape, size, token
from energies.builder import clip, style
from energies import program as P
from energies.builder import settings as with_settings

IDENTITY = [l for l in (Path(__file__).parent / "fixtures" / "identity.edit").read_text().splitlines() if l.strip()]


def one(text):
    prog = dsl.compile(dsl.parse(text))
    assert len(prog.terms) == 1
    return prog.terms[0]


@pytest.mark.parametrize("line", IDENTITY)
def test_canonical_lines_round_trip(line):
    """The canonical text of every construct formats back to itself."""
    assert dsl.format(dsl.parse(line)) == line + "\n"


# Every construct of the language, with the Program it must mean.
CONSTRUCTS = [
    ('centroid(token "circle") -> (0.75, 0.5)', P.Move(token=P.TokenRef(word="circle"), to=(0.75, 0.5))),
    ('centroid(token "circle") += (0.25, 0)', P.Shift(token=P.TokenRef(word="circle"), by=(0.25, 0.0))),
    ('size(token "square") *= 1.5', P.Resize(token=P.TokenRef(word="square"), factor=1.5)),
    ('size(token "square") -> 0.12', P.SizeTo(token=P.TokenRef(word="square"), area=0.12)),
    ('shape(token "square") -> shape(token "circle")', P.ShapeFrom(token=P.TokenRef(word="square"), other=P.TokenRef(word="circle"))),
    ('appearance(token "circle") -> appearance(token "square")',
     P.AppearanceFrom(token=P.TokenRef(word="circle"), other=P.TokenRef(word="square"))),
    ("keep appearance", P.KeepAppearance()),
    ("keep layout", P.KeepShape()),
    ('keep shape(token "square")', P.KeepShape(token=P.TokenRef(word="square"))),
    ("keep attention", P.KeepAttention()),
    ('centroid(token "circle") -> (0.75, 0.5) * 2.0 @ 0..0.6',
     P.Move(token=P.TokenRef(word="circle"), to=(0.75, 0.5), weight=2.0, window=P.Window(start=0, end=0.6))),
    ('keep appearance via latent', P.KeepAppearance(placement="latent")),
    ('size(token "dog"#2) *= 2', P.Resize(token=P.TokenRef(word="dog", occurrence=2), factor=2.0)),
    ("direction smile*1.5", P.Direction(name="smile", weight=1.5)),
    ('direction green within token "circle" * 2', P.Direction(name="green", token=P.TokenRef(word="circle"), weight=2.0)),
    ("direction green within (0, 0, 0.5, 1)", P.Direction(name="green", box=(0.0, 0.0, 0.5, 1.0))),
    ("keep structure", P.KeepStructure()),
    ("keep pixels", P.KeepPixels()),
    ('keep pixels inside token "square"', P.KeepPixels(token=P.TokenRef(word="square"), inside=True)),
    ('keep pixels outside token "circle" * 2', P.KeepPixels(token=P.TokenRef(word="circle"), inside=False, weight=2.0)),
    ('clip "a blue circle" from "a red circle"', P.Clip(target="a blue circle", source="a red circle")),
    ('clip "a blue circle" @ 0..0.5', P.Clip(target="a blue circle", window=P.Window(start=0, end=0.5))),
    ('style image "ref.png" * 0.5', P.Style(path="ref.png", weight=0.5)),
]


@pytest.mark.parametrize("text,expected", CONSTRUCTS, ids=[c[0] for c in CONSTRUCTS])
def test_each_construct_means_what_it_says(text, expected):
    assert one(text) == expected


def test_settings():
    prog = dsl.compile('prompt "a red circle and a blue square"\nnegative "blurry"\nseed 3\nsteps 30\ncfg 5.0\nmodel "shapes"')
    assert prog.settings == P.Settings(prompt="a red circle and a blue square", negative="blurry", seed=3, steps=30, cfg=5.0, model="shapes")
    assert prog.terms == ()


def test_the_design_cards_example_verbatim():
    prog = dsl.compile('centroid(token "dog") -> (0.7,0.5); keep appearance; direction smile*1.5')
    assert [t.kind for t in prog.terms] == ["move", "keep_appearance", "direction"]
    assert prog.terms[2].weight == 1.5


def test_separators_and_comments():
    text = '# a comment\n\nseed 3 ; steps 4 # trailing\n;;\nkeep layout # and #2 is not an occurrence here\n'
    prog = dsl.compile(text)
    assert prog.settings.seed == 3 and prog.settings.steps == 4 and prog.terms == (P.KeepShape(),)


def test_spans_point_at_the_statement():
    prog = dsl.compile(dsl.parse('seed 1\n  keep layout', "x.edit"))
    span = prog.terms[0].span
    assert (span.file, span.line, span.col) == ("x.edit", 2, 3)


def test_python_builder_builds_the_same_program():
    text = 'prompt "a red circle and a blue square"\ncentroid(token "circle") -> (0.75, 0.5) * 2\nkeep appearance\n'
    built = with_settings(prompt="a red circle and a blue square") + centroid(token("circle")).to(0.75, 0.5) * 2 + keep.appearance()
    assert built == dsl.compile(text)
    assert dsl.format(built) == 'prompt "a red circle and a blue square"\n\n' + text.split("\n", 1)[1]


def test_builder_covers_every_construct():
    built = (
        centroid("circle").by(0.25, 0) + size("square").times(1.5) + size("square").to(0.12)
        + shape("square").to(shape("circle")) + appearance("circle").to(appearance("square"))
        + keep.layout() + keep.shape("square") + keep.attention() + keep.appearance("square")
        + direction("smile") * 1.5 + direction("green", within="circle") + direction("green", box=(0, 0, 0.5, 1))
        + centroid(token("dog", 2)).to(0.1, 0.2).at(0, 0.6).via("latent")
        + keep.structure() + keep.pixels() + keep.pixels(inside="square") + keep.pixels(outside="circle") * 2
        + clip("a blue circle", source="a red circle") + clip("a green circle") + style("ref.png")
    )
    assert dsl.compile(dsl.format(built)) == built
    with pytest.raises(ValueError):
        keep.layout().via("nowhere")


def test_format_is_idempotent_and_keeps_comments():
    text = "# lead\n\nprompt  \"a red circle\"   # the scene\nseed 3;  keep layout\n\n\n# tail\n"
    once = dsl.format(dsl.parse(text))
    assert "# lead" in once and "# the scene" in once and "# tail" in once
    assert dsl.format(dsl.parse(once)) == once
    assert dsl.compile(once) == dsl.compile(text)


def test_program_equality_ignores_positions_but_not_meaning():
    a = dsl.compile(dsl.parse('keep shape(token "x")', "a.edit"))
    b = dsl.compile(dsl.parse('\n\n   keep shape(token "x")', "b.edit"))
    assert a == b
    assert a != dsl.compile('keep shape(token "y")')


ERRORS = [
    ('centroid("circle") -> (0.7, 0.5)', 1, 10, "write token"),
    ("foo 3", 1, 1, None),
    ('centroid(token "c") -> (1 2)', 1, 27, "comma"),
    ('prompt "abc', 1, 8, '"'),
    ('centroid(token "c") = (1, 2)', 1, 21, "->"),
    ('centroid(token "c") -> 0.5', 1, 24, "for example"),
    ('centroid(token "c") -> (2, 0.5)', 1, 25, "image units"),
    ("keep appearanc", 1, 6, "did you mean 'appearance'"),
    ('shape(token "c") *= 2', 1, 18, "shape takes"),
    ('keep layout @ 0.5..0.2', 1, 15, "fractions"),
    ('prompt "x"\nprompt "y"', 2, 1, "line 1"),
    ("keep layout via epss", 1, 17, "did you mean 'eps'"),
    ("seed 1.5", 1, 6, None),
    ("steps 0", 1, 7, None),
    ('size(token "s") *= -2', 1, 20, None),
    ('size(token "s") -> 2', 1, 20, None),
    ('keep centroid(token "s")', 1, 6, "keep takes"),
    ('centroid(token "") -> (0.5, 0.5)', 1, 16, None),
    ("cfg -1", 1, 5, None),
    ('keep appearance inside token "c"', 1, 17, "keep pixels"),
    ('clip ""', 1, 6, "for example"),
    ('style "x.png"', 1, 7, "'image'"),
    ("keep structur", 1, 6, "did you mean 'structure'"),
]


@pytest.mark.parametrize("text,line,col,hint", ERRORS, ids=[e[0] for e in ERRORS])
def test_mistakes_are_reported_at_their_place(text, line, col, hint):
    with pytest.raises(dsl.SteerError) as info:
        dsl.compile(dsl.parse(text, "bad.edit"))
    e = info.value
    assert (e.file, e.line, e.col) == ("bad.edit", line, col)
    rendered = e.render()
    assert rendered.startswith(f"bad.edit:{line}:{col}: error: ")
    assert "^" in rendered.splitlines()[2]
    if hint:
        assert hint in (e.hint or "")


# --- fuzz: mutated scripts compile or raise the language's own error, never anything else -----

SEEDS = IDENTITY + ['centroid(token "dog") -> (0.7,0.5); keep appearance; direction smile*1.5']
PIECES = ["(", ")", ",", ";", "\n", "#", "#2", '"', "->", "+=", "*=", "*", "@", "..", "via", "token", "keep",
          "1e9", "-0", ".5", "nan", "inf", "1e999", "\\", "é", "\t", " ", "0..1", "shape", "size"]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)))
        if op == "insert":
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)):]
        else:
            text = text[:pos] + piece + text[pos + len(piece):]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_scripts_compile_or_raise_steer_errors(text):
    try:
        prog = dsl.compile(dsl.parse(text, "fuzz.edit"))
    except dsl.SteerError as e:
        e.render()  # rendering must not fail either
        return
    again = dsl.compile(dsl.parse(dsl.format(prog)))
    assert again == prog, "whatever compiles must survive a format round trip"

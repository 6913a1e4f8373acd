from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import dsl
from dsl.printer import format_script
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
    ("keep appearance every 2", P.KeepAppearance(every=2)),
    ('centroid(token "circle") -> (0.75, 0.5) * 2 @ 0..0.6 every 3 via eps',
     P.Move(token=P.TokenRef(word="circle"), to=(0.75, 0.5), weight=2.0, window=P.Window(start=0, end=0.6), every=3, placement="eps")),
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
        + centroid(token("dog", 2)).to(0.1, 0.2).at(0, 0.6).via("latent") + keep.appearance().guided_every(2)
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
    ("keep appearance every 0", 1, 23, "every 2"),
    ("keep appearance every 1.5", 1, 23, "every 2"),
    ("keep appearance every " + "9" * 400, 1, 23, "every 2"),  # an infinite float: int() of it raised OverflowError
    ("keep appearance via eps every 2", 1, 25, None),  # modifiers come in their order
    ("direction smile every 2", 1, 23, "energy terms"),
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


# --- the formatter keeps meaning and comments -------------------------------------------------

def fmt(text, file="<script>"):
    return format_script(dsl.parse(text, file))


@pytest.mark.parametrize("text", [
    'keep layout ;#2 is the one',
    'keep pixels inside token "x" ;#2 is the one',
    'centroid(token "circle") -> (0.5,0.5) #2 because',
    'direction d within token "circle" #2 because',
    'keep shape(token "x") #2',
])
def test_a_comment_that_starts_with_a_digit_stays_a_comment(text):
    once = fmt(text)
    assert dsl.compile(once) == dsl.compile(text)
    assert fmt(once) == once
    assert [c.text for c in dsl.parse(once).comments] == [c.text for c in dsl.parse(text).comments]


def test_an_occurrence_is_glued_to_the_closing_quote():
    assert one('keep shape(token "dog"#2)').token.occurrence == 2
    assert one('keep pixels inside token "dog"#2 # two').token.occurrence == 2
    assert one('keep pixels inside token "dog" #2').token.occurrence == 1, "after a space, # starts a comment"
    with pytest.raises(dsl.SteerSyntaxError):
        dsl.parse('keep shape(token "dog" #2)')  # the comment eats the ")"


@pytest.mark.parametrize("text,expected", [
    ("keep layout  # why", "keep layout  # why\n"),
    ("seed 1; keep layout # why\n", "seed 1\nkeep layout  # why\n"),
    ("\x0c\nkeep layout # why", "keep layout  # why\n"),  # a form feed is a blank, not a line break
    ("seed 1\r\n\r\nkeep layout # why\r\n", "seed 1\n\nkeep layout  # why\n"),
    ("keep layout\n; # after a lone separator\n", "keep layout\n# after a lone separator\n"),
    ("# a\nseed 1 ;# b\n\n  # c\n;# d\nkeep layout # e\n# f", "# a\nseed 1  # b\n\n# c\n# d\nkeep layout  # e\n# f\n"),
])
def test_comments_stay_where_they_were(text, expected):
    assert fmt(text) == expected
    assert fmt(expected) == expected


@pytest.mark.parametrize("text", ['keep nothing', 'prompt "a"\nseed 1\nseed 2', 'centroid(token "c") -> 0.5'])
def test_fmt_refuses_what_does_not_compile_with_the_line_and_a_caret(text):
    with pytest.raises(dsl.SteerCompileError) as info:
        fmt(text, "bad.edit")
    lines = info.value.render().split("\n")
    assert lines[0].startswith(f"bad.edit:{info.value.line}:{info.value.col}: error: ")
    assert lines[1] == "  " + text.split("\n")[info.value.line - 1]
    assert lines[2].strip().startswith("^")


# --- one notion of a line: \n, or \r\n ------------------------------------------------------

ODD_BREAKS = ["\r", "\x0c", "\x0b", "\x85", "\u2028", "\u2029", "\x1c", "\x00", "\x1b"]


@pytest.mark.parametrize("ch", ODD_BREAKS, ids=[f"U+{ord(c):04X}" for c in ODD_BREAKS])
@pytest.mark.parametrize("template", ['seed 1\nprompt "a{ch}b"', "seed 1\nkeep layout # a{ch}b", "seed 1\n# a{ch}b\nkeep layout"])
def test_control_characters_in_strings_and_comments_are_refused_where_they_are(template, ch):
    text = template.format(ch=ch)
    with pytest.raises(dsl.SteerSyntaxError) as info:
        dsl.parse(text, "bad.edit")
    e = info.value
    line = text.split("\n")[e.line - 1]
    assert (e.line, line[e.col - 1]) == (2, ch)
    shown = e.render().split("\n")
    assert shown[1] == "  " + line.replace(ch, " ") and shown[2] == "  " + " " * (e.col - 1) + "^"


def test_tabs_in_strings_and_comments_round_trip():
    text = 'prompt "a\tb"  # c\td\n'
    assert fmt(text) == text and dsl.compile(text).settings.prompt == "a\tb"


@pytest.mark.parametrize("text,line", [
    ("seed 1\x0c\nkeep nothing", 2),
    ("seed 1\r\nkeep nothing\r\n", 2),
    ("prompt \"a\" # \u00e9\nseed 1\n\nkeep nothing", 4),
])
def test_errors_show_the_line_the_parser_counted(text, line):
    with pytest.raises(dsl.SteerError) as info:
        dsl.compile(dsl.parse(text, "bad.edit"))
    assert info.value.line == line
    assert info.value.render().split("\n")[1] == "  keep nothing"


def test_a_lone_carriage_return_is_not_a_line_break():
    with pytest.raises(dsl.SteerSyntaxError) as info:
        dsl.parse("seed 1\rkeep layout", "bad.edit")
    assert (info.value.line, info.value.col) == (1, 7)
    assert "\\r\\n" in info.value.hint
    assert info.value.render().split("\n")[1] == "  seed 1 keep layout"


def test_a_byte_order_mark_starts_a_script_but_nothing_else():
    assert dsl.compile("\ufeffkeep layout\n").terms == (P.KeepShape(),)
    assert fmt("\ufeff# lead\nkeep layout\n") == "# lead\nkeep layout\n"
    with pytest.raises(dsl.SteerSyntaxError) as info:
        dsl.parse("keep layout\n\ufeffseed 1")
    assert (info.value.line, info.value.col) == (2, 1)


# --- keywords are whole words ------------------------------------------------------------------

KEYWORDISH = ["sizes", "size", "shape_x", "keep", "keeper", "prompt", "prompting", "seeds", "seed-2", "direction", "token", "within",
              "via", "inside", "outsider", "from", "image", "clip", "drag", "style", "centroid2", "appearances", "invert", "cfg_", "model"]


@pytest.mark.parametrize("name", KEYWORDISH)
def test_a_direction_can_have_any_name(name):
    assert one(f"direction {name} * 2") == P.Direction(name=name, weight=2.0)
    assert fmt(f"direction {name}") == f"direction {name}\n"


@settings(max_examples=200, deadline=None)
@example("sizes")
@example("prompt-2")
@example("keep_red")
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]*", fullmatch=True))  # what `steer learn` accepts as a name
def test_every_name_steer_learn_accepts_is_a_direction_name(name):
    assert one(f"direction {name} within token \"x\"#2") == P.Direction(name=name, token=P.TokenRef(word="x", occurrence=2))


def test_a_keyword_prefix_does_not_make_a_statement():
    with pytest.raises(dsl.SteerSyntaxError) as info:
        dsl.parse("seeds 3")
    assert info.value.message == "unknown statement 'seeds'" and "'seed'" in info.value.hint


# --- huge inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["seed " + "9" * 5000, "steps " + "1" * 5000, 'keep shape(token "x"#' + "1" * 5000 + ")",
                                  "cfg " + "9" * 5000, "keep layout * 1e99999"])
def test_huge_numbers_are_language_errors(text):
    with pytest.raises(dsl.SteerError) as info:
        dsl.compile(dsl.parse(text))
    assert len(info.value.message) < 100


def test_a_megabyte_of_newlines_and_many_comments_format_in_linear_time():
    import time

    t0 = time.perf_counter()
    assert fmt("\n" * 2**20 + "keep layout\n") == "keep layout\n"
    text = "keep layout  # c\n# d\n" * 5000
    assert fmt(text) == text
    assert time.perf_counter() - t0 < 5, "was 10 s and more with a token per newline and a scan per comment"

"""Fuzzing the language with generated and mutated scripts.

Two properties, for any text at all:
  (a) parsing and compiling it either succeed or raise the language's own error (a SteerError
      that renders as file:line:col, the line and a caret), never another exception;
  (b) a script that compiles formats to a fixed point: fmt(fmt(x)) == fmt(x), the formatted text
      compiles to the same Program and keeps every comment (where it was: trailing or not).
      A script that parses but does not compile is refused by fmt with a located error too.

The scripts are valid ones built from the grammar (keywords as names, odd but legal numbers,
comments that start with digits, CRLF, form feeds, a BOM ...) and mutations of them (characters
inserted, deleted or replaced with pieces such as \\r, U+2028, '#2', huge numbers, quotes).

The default run tries 2,000 scripts in a few seconds. The slow variant runs 100,000:

    OMP_NUM_THREADS=1 python -m pytest -m slow tests/test_fuzz.py --hypothesis-show-statistics
"""

import random
import string as _string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import dsl
from dsl.printer import format_script

FAST = settings(max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))

# --- the generator of valid scripts -----------------------------------------------------------
#
# One seeded random.Random per example (hypothesis draws the seed): a script takes a hundred
# choices, and as separate hypothesis draws they cost five times the checks themselves. The
# price is shrinking; a failing script is printed whole instead (note()).

# Names that begin with, or are, a keyword: all are names where a name is expected.
KEYWORDISH = ["size", "sizes", "shape", "shapes", "keep", "keeper", "prompt", "prompting", "seed", "seeds", "steps", "cfg",
              "model", "source", "invert", "negative", "direction", "token", "within", "via", "every", "everyone", "inside", "outside", "from",
              "image", "clip", "drag", "style", "layout", "pixels", "centroid", "appearance", "size-up", "keep_red"]
NAME_START, NAME_REST = _string.ascii_letters + "_", _string.ascii_letters + _string.digits + "_-"
# What strings and comments may hold: printable text and tabs, some of it far from ASCII.
ODD_TEXT = "\t é漢字🙂\u200b\u202e\ufeff\u00a0\u0301'#;\\\"" + _string.ascii_letters + _string.digits + _string.punctuation
BLANKS = [" ", " ", " ", "  ", "\t", " \x0c "]  # where a blank is needed
GAPS = ["", "", " ", "\t"]  # where one may be
SEPARATORS = ["\n", "\n", "\n", "\r\n", ";", " ; ", "\n\n", ";\n", "\n \n", "\n\x0c\n", ";;"]
SETTINGS = ["prompt", "negative", "seed", "steps", "cfg", "model", "source", "invert"]
PLACEMENTS = ["eps", "latent", "mean", "x0"]


def name(r: random.Random) -> str:
    if r.random() < 0.5:
        return r.choice(KEYWORDISH)
    return r.choice(NAME_START) + "".join(r.choices(NAME_REST, k=r.randint(0, 10)))


def number(r: random.Random, lo: float, hi: float) -> str:
    """A number in [lo, hi] in one of the ways it may be written: 0.5, .5, +0.50, 5e-1, 5.00E-01."""
    x = r.choice([lo, hi, r.uniform(lo, hi), r.uniform(lo, hi)])
    text = r.choice([repr(x), f"{x:.3f}", f"{x:e}", f"{x:.2E}"])
    text = text[:-2] if text.endswith(".0") else text
    if r.random() < 0.3 and text.startswith("0."):
        text = text[1:]  # .5
    if r.random() < 0.2 and not text.startswith("-"):
        text = "+" + text
    return text


def whole(r: random.Random, lo: int, hi: int) -> str:
    return str(r.choice([lo, hi, r.randint(lo, hi)]))


def text(r: random.Random, n: int = 10) -> str:
    return "".join(r.choices(ODD_TEXT, k=r.randint(0, n)))


def string(r: random.Random, weights_free: bool = False) -> str:
    body = text(r)
    if weights_free:  # a prompt's parentheses, brackets and tags are weight syntax (dsl/weights.py), fuzzed there
        body = "".join(c for c in body if c not in "()[]<")
    body = body.replace("\\", "\\\\").replace('"', '\\"')
    if r.random() < 0.1:
        body += "\\q"  # an escaped ordinary character means that character
    return '"' + body + '"'


def tokref(r: random.Random) -> str:
    word = r.choice(['"circle"', '"square"', '"red circle"', '"dog"']) if r.random() < 0.5 else string(r)
    return f"token{r.choice(BLANKS)}{word}" + r.choice(["", "", "", "#1", "#2", "#3", "#02"])  # glued to the quote


def point(r: random.Random, lo: float, hi: float) -> str:
    g = lambda: r.choice(GAPS)  # noqa: E731
    return f"({g()}{number(r, lo, hi)}{g()},{g()}{number(r, lo, hi)}{g()})"


def within(r: random.Random) -> str:
    if r.random() < 0.5:
        return f" within {tokref(r)}"
    return f" within ({number(r, 0, 0.4)}, {number(r, 0, 0.4)},{number(r, 0.6, 1)} ,{number(r, 0.6, 1)})"


def modifiers(r: random.Random, placements=PLACEMENTS, energy=True) -> str:
    out = ""
    if r.random() < 0.4:
        out += f"{r.choice(GAPS)}*{r.choice(GAPS)}{number(r, -3, 3)}"
    if r.random() < 0.4:
        out += f" @{r.choice(GAPS)}{number(r, 0, 0.5)}..{number(r, 0.6, 1)}"
    if energy and r.random() < 0.2:  # refused on directions and drags, which take no gradient
        out += f" every {r.randint(1, 4)}"
    if r.random() < 0.3:
        out += f" via {r.choice(placements)}"
    return out


def setting(r: random.Random, key: str) -> str:
    if key in ("prompt", "negative", "model", "source"):
        value = string(r, weights_free=key in ("prompt", "negative"))
    elif key == "seed":
        value = whole(r, 0, 2**63 - 1)
    elif key == "steps":
        value = whole(r, 1, 1000)
    elif key == "cfg":
        value = number(r, 0, 20)
    else:
        value = r.choice(["ddim", "null-text"])
    return f"{key}{r.choice(BLANKS)}{value}"


def term(r: random.Random) -> str:
    t = lambda: tokref(r)  # noqa: E731
    kind = r.randrange(10)
    if kind == 0:
        body = f"centroid({t()}) -> {point(r, 0, 1)}"
    elif kind == 1:
        body = f"centroid({r.choice(GAPS)}{t()}{r.choice(GAPS)})+={point(r, -1, 1)}"
    elif kind == 2:
        body = r.choice([f"size({t()}) *= {number(r, 0.01, 5)}", f"size({t()}) -> {number(r, 0.01, 1)}"])
    elif kind == 3:
        prop = r.choice(["shape", "appearance"])
        body = f"{prop}({t()}) -> {prop}({t()})"
    elif kind == 4:
        body = "keep " + r.choice(["appearance", "layout", "attention", "structure", "pixels", f"pixels inside {t()}",
                                   f"pixels outside {t()}", f"shape({t()})", f"appearance({t()})"])
    elif kind == 5:
        body = f"direction {name(r)}" + (within(r) if r.random() < 0.5 else "")
    elif kind == 6:
        body = f"clip {string(r)}" + (f" from {string(r)}" if r.random() < 0.5 else "")
    elif kind == 7:
        body = f"style image {string(r)}"
    else:
        body = f"drag {point(r, 0, 0.45)} -> {point(r, 0.55, 1)}" + (within(r) if r.random() < 0.5 else "")
        return body + modifiers(r, ["bottleneck", "latent"], energy=False)
    return body + modifiers(r, energy=kind != 5)


def comment(r: random.Random) -> str:
    if r.random() < 0.5:
        return r.choice(["#", "#2", "#2 is the one", '# token "x"#2', "#keep layout", "## twice", "#\t", "#3)"])
    return "#" + text(r, 12)


def valid_script(r: random.Random) -> str:
    """A script the grammar accepts, usually one that compiles (each setting at most once)."""
    statements = [setting(r, key) for key in r.sample(SETTINGS, r.randint(0, 4))]
    statements += [term(r) for _ in range(r.randint(0, 5))]
    r.shuffle(statements)
    out = "\ufeff" if r.random() < 0.05 else ""
    for i, s in enumerate(statements):
        if r.random() < 0.2:
            out += comment(r) + "\n"  # a comment on its own line
        out += s
        if r.random() < 0.3:
            out += r.choice([" ", "  ", "\t", ";", " ;"]) + comment(r) + "\n"  # a trailing one ends the line
        elif i < len(statements) - 1:
            out += r.choice(SEPARATORS)
    return out + (r.choice(SEPARATORS) if r.random() < 0.5 else "")


# --- mutations --------------------------------------------------------------------------------

SEEDS = [line for line in (Path(__file__).parent / "fixtures" / "identity.edit").read_text().splitlines() if line.strip()]
SEEDS += ['centroid(token "dog") -> (0.7,0.5); keep appearance; direction smile*1.5']
PIECES = ["(", ")", ",", ";", "\n", "\r\n", "\r", "\x0c", "\x0b", "\x85", "\u2028", "\u2029", "\x00", "\x1b", "\ufeff", "\u200b",
          "\u202e", "\ud800", "#", "#2", "#0", "#" + "9" * 30, '"', '""', "\\", "->", "+=", "*=", "*", "@", "..", "via", "token",
          "keep", "direction", "sizes", "size", "shape", "prompt", "within", "inside", "1e9", "-0", ".5", "+1", "nan", "inf",
          "1e999", "1e-999", "9" * 25, "9" * 5000, "é", "🙂", "\t", " ", "  ", "0..1", "# c\n", '\\"']


def mutated_script(r: random.Random) -> str:
    out = valid_script(r) if r.random() < 0.5 else r.choice(SEEDS)
    for _ in range(r.randint(1, 4)):
        pos = r.randint(0, len(out))
        piece = r.choice(PIECES) if r.random() < 0.7 else "".join(chr(r.randint(0, 0x10FFFF)) for _ in range(r.randint(1, 3)))
        op = r.randrange(3)
        if op == 0:
            out = out[:pos] + piece + out[pos:]
        elif op == 1:
            out = out[:pos] + out[pos + r.randint(1, 5):]
        else:
            out = out[:pos] + piece + out[pos + len(piece):]
    return out


SCRIPTS = st.randoms(use_true_random=True).map(lambda r: valid_script(r) if r.random() < 0.5 else mutated_script(r))


# --- the properties -------------------------------------------------------------------------

def assert_located(e: Exception, file: str):
    """The error is the language's, and renders with its place, the source line and a caret."""
    assert isinstance(e, dsl.SteerError), f"{type(e).__name__} escaped: {e}"
    assert e.span is not None and e.span.file == file
    head, line, caret, *_ = e.render().split("\n") + ["", ""]
    assert head.startswith(f"{file}:{e.line}:{e.col}: error: "), head
    assert line.startswith("  ") and caret.startswith("  " + " " * (e.col - 1) + "^"), (line, caret)


def check(text: str) -> str:
    """Both properties for one text; returns what happened to it."""
    try:
        script = dsl.parse(text, "fuzz.edit")
    except Exception as e:  # noqa: BLE001 - anything but a SteerError is the failure looked for
        assert_located(e, "fuzz.edit")
        return "syntax error"
    try:
        program = dsl.compile(script)
    except Exception as e:  # noqa: BLE001
        assert_located(e, "fuzz.edit")
        with pytest.raises(dsl.SteerError) as refused:
            format_script(script)
        assert_located(refused.value, "fuzz.edit")
        return "compile error"
    once = format_script(script)
    again = dsl.parse(once, "fmt.edit")
    assert dsl.compile(again) == program, "fmt changed the program"
    assert format_script(again) == once, "fmt is not idempotent"
    assert [(c.text, c.trailing) for c in again.comments] == [(c.text, c.trailing) for c in script.comments], "fmt moved a comment"
    return "formatted"


@FAST
@given(SCRIPTS)
def test_fuzz_scripts_raise_only_language_errors_and_format_to_a_fixed_point(script):
    note(repr(script))
    event(check(script))


@pytest.mark.slow
@SLOW
@given(SCRIPTS)
def test_fuzz_slow_100k_scripts(script):
    note(repr(script))
    event(check(script))


def test_the_generator_mostly_makes_scripts_that_format():
    """Guard against a generator that only ever exercises the error paths."""
    r = random.Random(0)
    outcomes = [check(valid_script(r)) for _ in range(300)]
    assert outcomes.count("formatted") > 0.8 * len(outcomes), {k: outcomes.count(k) for k in set(outcomes)}

"""The package's layers, read from its own imports (function-level imports included).

Bottom to top:
  0  energies.errors              errors and source spans
  1  energies.*                   the Program, its terms and their energies: tensor math and data
  2  dsl (the language)           grammar, parser, compiler, printer, binding to a tokenizer
  3  sampler (the engine)         backbones, probes, guided loop, inversion, editor, directions
  4  tools                        command line, REPL, benchmark, trainers, model evaluation
A module imports from its own layer or below. The engine uses the language only through the
package's API (`import dsl`: dsl.format, dsl.bind, ...), never its modules; the language never
imports the engine. And there is no import cycle anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("energies", "dsl", "sampler")
TOOLS = ("dsl.cli", "dsl.repl", "dsl.__main__", "dsl.batch", "dsl.notebook", "dsl.ui", "sampler.shapes.reship", "sampler.bench", "sampler.learn", "sampler.shapes.train", "sampler.shapes.ground", "sampler.shapes.flow_train", "sampler.shapes.flow_ground", "sampler.shapes.flow_blocks", "sampler.shapes.evaluate")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def layer(name: str) -> int:
    if any(name == t or name.startswith(t + ".") for t in TOOLS):
        return 4
    if name == "energies.errors":
        return 0
    return {"energies": 1, "dsl": 2, "sampler": 3}[name.split(".")[0]]


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The project modules `name` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module name: its longest module prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_arrow_points_up():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not wrong, "\n".join(wrong)


def test_the_engine_uses_the_language_only_through_its_api():
    wrong = [f"{a} imports {b}" for a, deps in graph().items() if layer(a) == 3
             for b in deps if b.startswith("dsl.")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for m in sorted(g[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_the_layers_are_the_ones_described():
    """The test reads real imports: a known edge of each kind is found."""
    g = graph()
    assert "energies.program" in g["dsl.compiler"] and "energies.errors" in g["energies.terms"] or "energies.errors" in g["energies.directions"]
    assert "dsl" in g["sampler.editor"] and "sampler.editor" in g["dsl.cli"]

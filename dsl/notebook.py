"""`%%steer`: run a cell of the language in Jupyter or IPython, and see the edit inline.

    %load_ext dsl.notebook

    %%steer [NAME] [--model M] [--seed N] [--steps N] [--device D] [--dtype fp16] [--low-memory]
    prompt "a red circle and a blue square"; steps 10
    centroid(token "circle") -> (0.75, 0.5)

The cell is a script of the language. The result (an EditResult: source and edit side by side
when displayed) is shown under the cell and bound to NAME in the notebook (default `_steer`), so
`_steer.token_map("circle")` or `_steer.sheet("sheet.png")` follow. The Editor (the model and the
source passes it has run) is kept by the shell and reused while the model is the same, so a cell
that only changes a weight runs only the edit pass, as the REPL's re-runs do.

A mistake in the cell is printed as the command line prints it, `<cell>:LINE:COL`, the line, a
caret and a hint, on stderr and without a traceback; nothing is bound.
"""

from __future__ import annotations

import os
import sys

from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from energies.errors import SteerError, SteerUsageError

CELL_FILE = "<cell>"  # the file name of a cell's lines, in errors
DEFAULT_NAME = "_steer"


@magics_class
class SteerMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.editor = None  # the kept Editor
        self.editor_key = None  # (model, device, dtype, low_memory) it was made for

    @magic_arguments()
    @argument("name", nargs="?", default=DEFAULT_NAME, help="the notebook variable the result is bound to (default _steer)")
    @argument("--model", help="the model, as `steer run --model` takes it (default: the cell's `model`, else shapes)")
    @argument("--seed", type=int, help="replaces the cell's seed")
    @argument("--steps", type=int, help="replaces the cell's steps")
    @argument("--device", default="auto", help="cuda, mps, cpu or auto (default)")
    @argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="Stable Diffusion's weights")
    @argument("--low-memory", action="store_true", help="every guided step recomputes its backward's activations (Stable Diffusion also slices attention)")
    @cell_magic
    def steer(self, line: str, cell: str):
        """Run the cell, a script of the steer language, and show source and edit side by side."""
        args = parse_argstring(self.steer, line)
        try:
            result = self.run(cell, args)
        except SteerError as e:
            print(e.with_source(cell).render(), file=sys.stderr)
            return None
        for w in result.warnings:
            print(w.with_source(cell).render(), file=sys.stderr)
        self.shell.user_ns[args.name] = result
        from IPython.display import display

        display(result)
        return None

    def run(self, cell: str, args):
        import dsl

        from energies.program import setting_problem

        for name in ("seed", "steps"):  # an option's mistake is the option's, not the cell line's
            problem = setting_problem(name, getattr(args, name))
            if problem:
                raise SteerUsageError(f"--{name} {getattr(args, name)}: {problem}")
        program = dsl.compile(dsl.parse(cell, CELL_FILE))
        program = program.with_settings(model=args.model, seed=args.seed, steps=args.steps)
        editor = self.editor_for(program.settings.model, args)
        return editor.run(program, script_dir=os.getcwd())

    def editor_for(self, model: str | None, args):
        """The kept Editor if it was made for this model and device, else a new one (which replaces it)."""
        from sampler.editor import Editor

        key = (model or "shapes", args.device, args.dtype, args.low_memory)
        if self.editor is None or self.editor_key != key:
            self.editor = None  # let the old model go before the new one loads
            self.editor = Editor(model, device=args.device, dtype=args.dtype, low_memory=args.low_memory)
            self.editor_key = key
        return self.editor


def load_ipython_extension(ipython):
    """`%load_ext dsl.notebook`: registers the %%steer cell magic."""
    ipython.register_magics(SteerMagics)

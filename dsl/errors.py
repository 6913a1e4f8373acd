"""The language's errors. They live at the bottom of the stack (energies/errors.py), because the
engine raises them too; the language offers them under its own name."""

from energies.errors import (  # noqa: F401
    SteerCompileError,
    SteerError,
    SteerRuntimeError,
    SteerSyntaxError,
    SteerUsageError,
    did_you_mean,
    is_invisible,
    source_lines,
)

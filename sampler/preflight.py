"""What a run is checked for before any sampling starts: the files it reads and the files it writes.

The run's inputs are every file it reads: the script, the source photo, the style images, the
direction files and the model's folder. No output is ever written over one of them, whatever
the flags say. An output may replace an existing file only if steer wrote it (its PNG carries a
`steer:program` text chunk) or the user said --overwrite. Outputs go into a folder that exists
and can be written, under a name that is not a folder.

check_program is what `steer run` refuses in a script without sampling (direction files that
do not fit the model, images that cannot be read); `steer check` asks it the same questions.
Every mistake is a SteerError: at the statement that named the file, or a one-line
SteerUsageError with a hint for a command-line path.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from energies import directions as direction_files
from energies import program as P
from energies.errors import SteerCompileError, SteerUsageError

from .backbones import direction_folders
from .directions import ModelShapes, shapes_of
from .directions import check as check_direction
from .directions.finetune import refuse_negative_share
from .flow import refuse_without_meaning
from .images import open_image

STEER_MARK = "steer:program"  # the PNG text chunk every image steer writes carries (result.py)


@dataclass
class RunInputs:
    """The files a run reads, each with what it is, and the folders all of whose files it may read."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    folders: list[tuple[Path, str]] = field(default_factory=list)

    def which(self, path: Path) -> str | None:
        """How `path` is an input ("it is the script", "it is inside the model folder ..."): the
        same file by any name, or any path inside an input folder. None if it is not one."""
        for f, what in self.files:
            if _same_file(path, f):
                return f"it is {what}"
        real = Path(os.path.realpath(path))
        for folder, what in self.folders:
            if real.is_relative_to(Path(os.path.realpath(folder))):
                return f"it is inside {what}"
        return None


def _same_file(a: Path, b: Path) -> bool:
    """Through symlinks and hard links; by name where either does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def run_inputs(program: P.Program, script: Path | None, model: str | None) -> RunInputs:
    """The inputs of running `program` (from the file `script`, if any) on `model`."""
    from .shapes import model as shapes_model

    here = script.parent if script is not None else Path.cwd()
    inputs = RunInputs()
    if script is not None:
        inputs.files.append((script, "the script"))
    if program.settings.source:
        inputs.files.append((here / program.settings.source, "the source photo"))
    known = direction_files.known(direction_folders(here, model))
    for t in program.terms:
        if t.kind == "style":
            inputs.files.append((here / t.path, "a style image"))
        elif t.kind == "direction" and t.name in known:
            inputs.files.append((known[t.name], f"the direction file of `{t.name}`"))
    folder = shapes_model.resolve(model or "shapes")
    if folder.is_dir():
        inputs.folders.append((folder, f"the model folder {folder}"))
    return inputs


def written_by_steer(path: Path) -> bool:
    """A PNG with steer's text chunk: an earlier result, which a new one may replace."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return STEER_MARK in getattr(im, "text", {})
    except Exception:  # not an image, unreadable: not steer's either way
        return False


def check_output(path: Path, inputs: RunInputs, overwrite: bool = False, option: str = "-o"):
    """Refuse to write `path` (given by `option`) before any work is done, when it is an input,
    a folder, in a folder that is missing or cannot be written, or a file steer did not write."""
    path = Path(path)
    what = inputs.which(path)
    if what is not None:
        raise SteerUsageError(f"{option} {path}: {what}, an input of this run; steer never writes over its inputs",
                              hint="write the image somewhere else")
    if path.is_dir():
        raise SteerUsageError(f"{option} {path}: is a folder", hint=f"name the file: {option} {path / 'edit.png'}")
    folder = path.parent
    if not folder.is_dir():
        raise SteerUsageError(f"{option} {path}: the folder {folder} does not exist", hint=f"create it first: mkdir -p {folder}")
    if not _can_write_in(folder):
        raise SteerUsageError(f"{option} {path}: cannot write in the folder {folder}", hint="choose a folder you can write in")
    if path.exists() and not overwrite and not written_by_steer(path):
        # the REPL's `:out` has no --overwrite: there, another name is the way out
        way_out = "pass --overwrite to replace it, or choose another name" if option.startswith("-") else "choose another name with :out PATH"
        raise SteerUsageError(f"{option} {path}: the file exists and steer did not write it", hint=way_out)


def _can_write_in(folder: Path) -> bool:
    """Asked of the file system, not of the permission bits: a read-only mount, or an ACL, says
    no where os.access may say yes."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path], inputs: RunInputs, overwrite: bool = False):
    """check_output for each (option -> path), and no two options naming one file."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        check_output(path, inputs, overwrite, option)
        key = os.path.realpath(path)
        if key in seen:
            raise SteerUsageError(f"{option} {path}: {seen[key]} writes there too", hint="give each image its own name")
        seen[key] = option


def check_program(bound: list, settings: P.Settings, script_dir, model) -> None:
    """What a run refuses in a bound program before it samples: a direction file with non-finite
    numbers or of another model (`model`: a Backbone, or the ModelShapes of one not loaded), a
    style image or source photo that cannot be read. Each at its statement."""
    here = Path(script_dir or ".")
    refuse_without_meaning(bound, model)  # a drag or an h-space direction on a flow transformer
    if any(x.kind == "direction" for x in bound) and not isinstance(model, ModelShapes):
        model = shapes_of(model)  # once: reading a prompt's shape runs the text encoder
    for x in bound:
        if x.kind == "direction":
            check_direction(x.direction, model, x.term.span)
            if x.direction.kind == "finetune":
                refuse_negative_share(x)
        elif x.kind == "style":
            open_image(here / x.term.path, x.term.span, what="style image").close()
    refuse_return_without_source(settings)
    if settings.source:
        open_image(here / settings.source, settings.spans.get("source")).close()


def refuse_return_without_source(settings: P.Settings) -> None:
    """`return t0` stops a photo's inversion at t0: without a `source` it means nothing."""
    if settings.return_step is not None and not settings.source:
        raise SteerCompileError("return needs a source: it is where a photo's inversion stops", settings.spans.get("return"),
                                hint='add a line like: source "photo.png"')


def check_without_weights(program: P.Program, script_dir, model: str | None, warnings: list | None = None) -> list:
    """What `steer run` would refuse in `program` before sampling, asked without loading the
    model's weights: its names against the tokenizer, its directions against the shapes in the
    config files (directions.model_shapes), its images. `steer check` and the REPL (as each line
    is added) ask it. Returns the bound terms; raises the SteerError run would; statements with
    nothing to do, or in conflict, go to `warnings`."""
    import dsl

    model = model or "shapes"
    tokenizer, shapes = _tokenizer_and_shapes(model)
    here = Path(script_dir or ".")
    bound = dsl.bind(program, program.settings.prompt, tokenizer, direction_folders(here, model), shapes.kind, warnings)
    check_program(bound, program.settings, here, shapes)
    return bound


@functools.lru_cache(maxsize=4)  # a REPL asks at every line, `steer check` once per script
def _tokenizer_and_shapes(model: str):
    from .backbones import flow_kind, load_tokenizer, refuse_pickle_only
    from .backbones.load import flow_prompt_shape
    from .directions import model_shapes

    refuse_pickle_only(model)  # run would refuse to load it
    flow = flow_kind(model)
    if flow is not None:  # of the direction kinds only prompt directions run there (flow.NO_MEANING): no mid block
        return load_tokenizer(model), ModelShapes(flow, str(model), (0, 0, 0), 0, flow_prompt_shape(model))
    return load_tokenizer(model), model_shapes(model)

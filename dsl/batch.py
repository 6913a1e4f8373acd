"""Batches: one script run over several seeds, source photos or weights, on one loaded model.

    steer run SCRIPT.edit --seeds 0-15              # 0,3,7 or 0-3,9 too
    steer run SCRIPT.edit --sources photos/         # every image in the folder as the source
    steer run SCRIPT.edit --sweep 2=0,0.5,1,2       # term 2's weight; 2=0:2:5 is 5 values from 0 to 2
    accelerate launch --multi_gpu --num_processes 2 -m dsl run SCRIPT.edit --seeds 0-15

A batch is a table: one row per seed or photo (or a single row), one column per combination of
the swept weights (or a single column). Each cell is an item, the script with that seed, source
photo and weights, written as NAME.png (with its program) into the output folder (SCRIPT-batch/
by default); each row's unedited source as ROW-source.png; and one grid.png of them all, a row's
source first. Seeds and photos do not combine: a photo's run starts from its inversion, not
from a seed's noise.

Everything that can be checked is checked before the model loads: the flags, the photos, the
output files (never over an input or a file steer did not write). An item whose PNG carries the
same item program (its `steer:batch` text chunk) is done and skipped, so an interrupted batch
resumes. The model is loaded once, and the items of one row run one after the other, so they
share its source pass (the Editor keeps it by its settings). Under `accelerate launch` (WORLD_SIZE
> 1) each process takes its share of the pending items (accelerate's PartialState) on its own
device, and the main process draws the grid when all are written.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from energies import program as P
from energies.errors import SteerError, SteerUsageError

# What a folder of photos is read for; other files in it (notes, a .DS_Store) are not photos.
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
BATCH_MARK = "steer:batch"  # the PNG text chunk that holds the item's program: what resume compares
GRID_NAME = "grid.png"


@dataclass(frozen=True)
class Row:
    """A seed or a source photo (or neither: the script's own), and what names it."""

    name: str  # in file names: "seed-3", "cat"; "" for the script's own seed and source
    label: str  # on the grid: "seed 3", "cat.jpg"
    seed: int | None = None
    photo: Path | None = None


@dataclass(frozen=True)
class Column:
    """One combination of the swept weights: ((term number from 1, weight), ...)."""

    weights: tuple[tuple[int, float], ...] = ()

    @property
    def name(self) -> str:
        return "_".join(f"t{n}={w:g}" for n, w in self.weights)

    @property
    def label(self) -> str:
        return " ".join(f"[{n}]*{w:g}" for n, w in self.weights)


@dataclass(frozen=True)
class Item:
    row: Row
    column: Column
    program: P.Program
    first_of_row: bool  # writes the row's source image

    @property
    def name(self) -> str:
        return "_".join(part for part in (self.row.name, self.column.name) if part)

    @property
    def key(self) -> str:
        """The program this item runs, as text: an earlier PNG with the same is this item done."""
        import dsl

        return dsl.format(self.program)


@dataclass
class Plan:
    rows: list[Row]
    columns: list[Column]
    items: list[Item]
    script: Path  # what relative paths (a photo, a style image) start from
    folder: Path
    inputs: object  # preflight.RunInputs: every file any item reads, and the photos' folder

    def image(self, item: Item) -> Path:
        return self.folder / f"{item.name}.png"

    def source(self, row: Row) -> Path:
        return self.folder / (f"{row.name}-source.png" if row.name else "source.png")

    @property
    def grid(self) -> Path:
        return self.folder / GRID_NAME


def is_batch(args) -> bool:
    return any(getattr(args, flag, None) for flag in ("seeds", "sources", "sweep"))


# ------------------------------------------------------------------------------------------------
# The flags


def parse_seeds(text: str) -> list[int]:
    """"0-15", "0,3,7", "0-3,9": each seed once, in the order written."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise SteerUsageError(f"--seeds {text}: {part!r} is not a seed or a range of seeds",
                                  hint="for example --seeds 0-15, --seeds 0,3,7 or --seeds 0-3,9")
        a, b = int(first), int(last) if dash else int(first)
        if b < a:
            raise SteerUsageError(f"--seeds {text}: the range {part} runs backwards", hint=f"write {b}-{a}")
        for seed in range(a, b + 1):
            problem = P.setting_problem("seed", seed)
            if problem:
                raise SteerUsageError(f"--seeds {text}: {problem}")
            if seed in seeds:
                raise SteerUsageError(f"--seeds {text}: seed {seed} is listed twice", hint="name each seed once")
            seeds.append(seed)
    return seeds


def photos_in(folder: Path) -> list[Path]:
    """Every image file in `folder` (not its subfolders), sorted by name, each checked readable
    (its header: no pixels are decoded before the model loads)."""
    from sampler.images import open_image

    if not folder.is_dir():
        raise SteerUsageError(f"--sources {folder}: " + ("is not a folder" if folder.exists() else "no such folder"),
                              hint="name a folder of photos")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith("."))
    if not photos:
        raise SteerUsageError(f"--sources {folder}: no photos in the folder", hint=f"it is read for {', '.join(PHOTO_SUFFIXES)} files")
    for photo in photos:
        try:
            open_image(photo, what="source photo").close()
        except SteerError as e:
            raise SteerUsageError(f"--sources {folder}: {e.message}", hint=e.hint) from None
    return photos


def parse_sweep(text: str, terms: int) -> list[tuple[int, float]]:
    """"2=0,0.5,1,2" or "2=0:2:5" (five values from 0 to 2) -> [(2, 0.0), (2, 0.5), ...]. Each
    value is a number of the language, checked by its weight rule."""
    number, eq, values = text.partition("=")
    if not (eq and number.strip().isdigit() and values.strip()):
        raise SteerUsageError(f"--sweep {text}: expected TERM=VALUES",
                              hint="for example --sweep 2=0,0.5,1,2 or --sweep 2=0:2:5 (term 2's weight, five values from 0 to 2)")
    n = int(number)
    if not 1 <= n <= terms:
        raise SteerUsageError(f"--sweep {text}: the script has no term {n} ({terms} term{'s' * (terms != 1)})",
                              hint="terms are numbered from 1 in the order the script writes them, as the REPL's :list shows")
    if ":" in values:
        weights = _spaced(text, values)
    else:
        weights = [_weight(text, v) for v in values.split(",")]
    return [(n, w) for w in weights]


def _spaced(text: str, values: str) -> list[float]:
    """A:B:K -> K evenly spaced weights from A to B, both included."""
    parts = values.split(":")
    if len(parts) != 3 or not parts[2].strip().isdigit() or int(parts[2]) < 2:
        raise SteerUsageError(f"--sweep {text}: a range is FROM:TO:COUNT with a COUNT of 2 or more", hint="for example 0:2:5")
    a, b, k = _weight(text, parts[0]), _weight(text, parts[1]), int(parts[2])
    return [float(f"{a + (b - a) * i / (k - 1):.12g}") for i in range(k)]  # 12 digits: no 0.30000000000000004 in the PNG's program


def _weight(text: str, value: str) -> float:
    from .compiler import weight_value
    from .parser import number

    span = P.Span(line=1, col=1, end_line=1, end_col=2, file="--sweep")
    try:
        return weight_value(number(value.strip(), span))
    except SteerError as e:
        raise SteerUsageError(f"--sweep {text}: {e.message}", hint=e.hint) from None


# ------------------------------------------------------------------------------------------------
# The plan: items, files, and what is done


def plan(program: P.Program, script: Path, args) -> Plan:
    """Every item of the batch and where it goes; all the flags checked, and the outputs, before
    the model loads. Creates the output folder."""
    from sampler.preflight import run_inputs

    _refuse_flags(args)
    rows = _rows(args, script)
    sweeps = [parse_sweep(s, len(program.terms)) for s in args.sweep or ()]
    swept = [s[0][0] for s in sweeps]
    for n in swept:
        if swept.count(n) > 1:
            raise SteerUsageError(f"--sweep: term {n} is swept twice", hint="give one --sweep per term, with all its values")
    columns = [Column(tuple(combo)) for combo in itertools.product(*sweeps)]
    items = [Item(row, column, _variant(program, row, column, script), first_of_row=c == 0)
             for row in rows for c, column in enumerate(columns)]
    inputs = run_inputs(program, script, program.settings.model)
    for item in items:
        if item.row.photo is not None:
            inputs.files.append((item.row.photo, "a source photo"))
    folder = Path(args.output) if args.output else script.with_name(f"{script.stem}-batch")
    batch = Plan(rows, columns, items, script, folder, inputs)
    _check_outputs(batch, args.overwrite, Path(args.sources) if args.sources else None)
    return batch


def _refuse_flags(args):
    """The flags of one image that a batch has no one place for."""
    for flag, given in (("--seed", args.seed is not None), ("--source-out", args.source_out), ("--sheet", args.sheet is not None)):
        if given and (flag != "--seed" or args.seeds):
            hint = "--seeds takes one seed too: --seeds 5" if flag == "--seed" else "a batch writes each row's source and one grid"
            raise SteerUsageError(f"{flag} is for one image, not a batch ({'--seeds' if flag == '--seed' else 'a batch flag'} given)", hint=hint)
    if args.seeds and args.sources:
        raise SteerUsageError("--seeds and --sources do not combine: a batch's rows are seeds or photos, and a photo's run "
                              "starts from its inversion, not from a seed's noise",
                              hint="run the photos with the script's seed, or the seeds without --sources")


def _rows(args, script: Path) -> list[Row]:
    if args.seeds:
        return [Row(f"seed-{s}", f"seed {s}", seed=s) for s in parse_seeds(args.seeds)]
    if args.sources:
        photos = photos_in(Path(args.sources))
        stems = [p.stem for p in photos]
        # two photos of one stem (cat.png, cat.jpg) keep their suffix apart in their names
        return [Row(p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_"), p.name, photo=p) for p in photos]
    return [Row("", "")]


def _variant(program: P.Program, row: Row, column: Column, script: Path) -> P.Program:
    """The script's program with this row's seed or photo (in place of its own `source`) and
    this column's weights."""
    if row.seed is not None:
        program = program.with_settings(seed=row.seed)
    if row.photo is not None:  # written relative to the script, as a `source` line would be
        program = program.with_settings(source=os.path.relpath(row.photo.resolve(), script.parent.resolve()))
    terms = list(program.terms)
    for n, weight in column.weights:
        terms[n - 1] = terms[n - 1].model_copy(update={"weight": weight})
    return program.model_copy(update={"terms": tuple(terms)})


def _check_outputs(batch: Plan, overwrite: bool, photos: Path | None):
    """The folder made (not inside an input, nor the photos' folder, where a later batch would
    read the edits as photos), then every file the batch writes checked by the run's output rules;
    a name two files share (a photo called grid.png) is refused too."""
    from sampler.preflight import check_outputs

    folder = batch.folder
    what = batch.inputs.which(folder)
    if photos is not None and folder.exists() and os.path.samefile(folder, photos):
        what = f"it is the photos' folder {photos}"
    if what is not None:
        raise SteerUsageError(f"-o {folder}: {what}, an input of this run; steer never writes over its inputs",
                              hint="write the batch into another folder")
    if folder.exists() and not folder.is_dir():
        raise SteerUsageError(f"-o {folder}: is a file; a batch writes a folder", hint=f"name a folder: -o {folder.with_suffix('')}-batch")
    if not folder.parent.is_dir():
        raise SteerUsageError(f"-o {folder}: the folder {folder.parent} does not exist", hint=f"create it first: mkdir -p {folder.parent}")
    made = not folder.exists()
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise SteerUsageError(f"-o {folder}: cannot create the folder: {e.strerror or e}", hint="choose a folder you can write in") from None
    # keys of three kinds that no photo's name can make equal: each file is checked, none hidden
    outputs = {f"-o (item {item.name})": batch.image(item) for item in batch.items}
    outputs.update({f"-o (source of {row.name or 'the script'})": batch.source(row) for row in batch.rows})
    outputs["-o (grid)"] = batch.grid
    try:
        check_outputs(outputs, batch.inputs, overwrite)
    except SteerUsageError:
        if made:  # a refused batch leaves no empty folder behind
            with contextlib.suppress(OSError):  # another process of the batch may have removed it
                folder.rmdir()
        raise


def is_done(batch: Plan, item: Item) -> bool:
    """Its image (and, for a row's first item, the row's source) was written for this very program."""
    files = [batch.image(item)] + ([batch.source(item.row)] if item.first_of_row else [])
    return all(_written_for(path, item.key) for path in files)


def _written_for(path: Path, key: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "text", {}).get(BATCH_MARK) == key
    except Exception:  # missing, unreadable, half-written by a killed run: not done
        return False


# ------------------------------------------------------------------------------------------------
# Running


@dataclass
class Solo:
    """One process: what accelerate's PartialState offers a batch, without accelerate."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True
    device: object = None  # the command line's --device

    def split_between_processes(self, items):
        return contextlib.nullcontext(items)

    def wait_for_everyone(self):
        pass


def process_state(device: str):
    """accelerate's PartialState when launched as several processes (accelerate launch, torchrun
    set WORLD_SIZE), else Solo. On a machine without CUDA, or with --device cpu, the processes
    meet over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Solo()
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


@dataclass
class Outcome:
    pending: list[Item] = field(default_factory=list)  # run by this batch, in all its processes
    skipped: list[Item] = field(default_factory=list)  # done by an earlier one
    main: bool = True  # this is the process that speaks (and wrote the grid)


def run(batch: Plan, make_editor: Callable, device: str, progress: bool = True, warn: Callable = print) -> Outcome:
    """Run the pending items of `batch` (this process's share of them) on one Editor, made by
    make_editor(device), and write the grid. `warn(result)` is shown the first item's warnings
    (every item shares the script's statements)."""
    state = process_state(device)
    try:
        skipped = [item for item in batch.items if is_done(batch, item)]
        pending = [item for item in batch.items if item not in skipped]
        if skipped and state.is_main_process:
            print(f"{len(skipped)} of {len(batch.items)} items already done in {batch.folder}, skipped: {_names(skipped)}")
        state.wait_for_everyone()  # every process has read what is done before any writes more
        with state.split_between_processes(pending) as mine:
            if mine:
                editor = make_editor(str(state.device) if state.num_processes > 1 else device)
                _run_items(batch, mine, editor, progress and state.is_main_process, warn if state.is_main_process else _silent, state)
        state.wait_for_everyone()
        if state.is_main_process:
            write_grid(batch)
    finally:
        if state.num_processes > 1:
            state.destroy_process_group()
    return Outcome(pending, skipped, state.is_main_process)


def _names(items: list[Item], shown: int = 6) -> str:
    names = [item.name for item in items]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _silent(result):
    pass


def _run_items(batch: Plan, items: list[Item], editor, progress: bool, warn: Callable, state):
    """Each item on the one editor, its sampling bars off: one bar counts the items."""
    from tqdm.auto import tqdm

    desc = "batch" if state.num_processes == 1 else f"batch ({state.num_processes} processes; the main one's items)"
    for n, item in enumerate(tqdm(items, desc=desc, disable=not progress, dynamic_ncols=True)):
        result = editor.run(item.program, progress=False, script_dir=batch.script.parent)
        if n == 0:
            warn(result)
        _save(batch, item, result, state)


def _save(batch: Plan, item: Item, result, state):
    """The edit, and for a row's first item the row's source, each with the ran program and the
    item's own (what resume compares), and which process made it when there were several."""
    from sampler.images import write_png

    record = {**result.record(), BATCH_MARK: item.key}
    if state.num_processes > 1:
        record["steer:process"] = f"{state.process_index + 1} of {state.num_processes}"
    if item.first_of_row:
        write_png(result.source_image, batch.source(item.row), {**record, "steer:image": "source"})
    write_png(result.image, batch.image(item), record)


def write_grid(batch: Plan):
    """grid.png: each row's source, then its edits; a single column of edits wraps, pairs of
    (source, edit) side by side, so sixteen seeds make a square and not a strip."""
    import dsl
    from sampler.images import write_png
    from sampler.pictures import labelled_grid

    tiles = []
    for row in batch.rows:
        cells = [item for item in batch.items if item.row == row]
        tiles.append((_read(batch.source(row)), f"{row.label} source".strip()))
        for item in cells:
            label = item.column.label if len(batch.columns) > 1 else f"{row.label} edit".strip()
            tiles.append((_read(batch.image(item)), label))
    per_row = 1 + len(batch.columns)
    columns = per_row if len(batch.columns) > 1 else per_row * math.ceil(math.sqrt(len(batch.rows)))
    first = batch.items[0].program
    write_png(labelled_grid(tiles, columns), batch.grid,
              {"steer:program": dsl.format(first), "steer:image": "batch grid", "steer:batch-items": " ".join(i.name for i in batch.items)})


def _read(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255

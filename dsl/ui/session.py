"""The page's state that is not the page: one Editor kept across runs, and the history of runs.

As in the REPL (dsl/repl.py), the model is loaded once and the Editor keeps the source pass, so
a re-run after a weight change costs only the edit pass. Every run's images and script are
written into the session's folder (the PNG with its program in it, as `steer run` writes it),
so they can be downloaded and compared later. A photo dropped on the page is copied there too,
under a name made from its bytes: the same photo is the same file, and the inversion cache
(sampler/inversion_cache.py), keyed by the photo's bytes, finds its inversion again.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from energies.errors import SteerError, SteerUsageError

from . import script as S

DISPLAY_SIDE = 384  # small images are shown enlarged by a whole factor to at least this, without blur
KEEP_RESULTS = 16  # runs whose full result (maps) is kept in memory; older ones keep their images only


@dataclass
class Run:
    number: int
    text: str  # the script as run
    image: np.ndarray  # (H, W, 3) in [0, 1]
    source_image: np.ndarray
    seconds: float  # from Run to the image, model loading included
    png: Path  # the edited image, its program embedded
    source_png: Path
    script: Path
    result: object = None  # the EditResult, for the word maps; dropped for old runs

    @property
    def name(self) -> str:
        return f"run {self.number} ({self.seconds:.1f} s)"


@dataclass
class LiveSession:
    script: str | None = None  # the script the page opened (its folder resolves relative paths)
    model: str | None = None  # --model: in place of the script's own
    device: str = "auto"
    dtype: str = "fp32"
    low_memory: bool = False
    folder: Path | None = None  # where runs and uploads are written (default: a new temporary folder)
    runs: list[Run] = field(default_factory=list)

    def __post_init__(self):
        import dsl

        self.file = self.script or "page.edit"
        self.script_dir = Path(self.script).parent if self.script else Path.cwd()
        self.text = dsl.read_script(self.script) if self.script else EXAMPLE
        self.folder = Path(self.folder or tempfile.mkdtemp(prefix="steer-ui-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.editor = None
        self._editor_model = None
        self._lock = threading.Lock()  # one run or map at a time: the Editor's probes are not re-entrant

    def forget_folder_if_empty(self):
        """A page that never served leaves no empty folder behind."""
        try:
            self.folder.rmdir()
        except OSError:  # not empty (or already gone): the runs in it are the user's
            pass

    # -- checking ------------------------------------------------------------------------------

    def check(self, text: str) -> S.Check:
        return S.check(text, self.file, self.script_dir, self.model)

    # -- running -------------------------------------------------------------------------------

    def run(self, text: str, progress: bool = True) -> Run:
        """Run the script; its mistakes as SteerErrors located in it. The Editor (and its source
        passes) is kept while the model stays the same."""
        t0 = time.perf_counter()
        checked = self.check(text)
        if not checked.ok:
            raise checked.error
        program = checked.program
        with self._lock:
            editor = self._editor_for(program.settings.model)
            try:
                result = editor.run(program, progress=progress, script_dir=self.script_dir)
            except SteerError as e:
                raise S.located(e, self.file, text)
            seconds = time.perf_counter() - t0
            return self._record(text, result, seconds)

    def _editor_for(self, model: str | None):
        from sampler.editor import Editor

        if self.editor is None or model != self._editor_model:
            self.editor = None  # the old model's memory goes before the new one loads
            self.editor = Editor(model, device=self.device, dtype=self.dtype, low_memory=self.low_memory)
            self._editor_model = model
        return self.editor

    def _record(self, text: str, result, seconds: float) -> Run:
        from energies.files import atomic_write

        n = len(self.runs) + 1
        png, source_png, script = (self.folder / f"run-{n}{suffix}" for suffix in (".png", "-source.png", ".edit"))
        result.save(png, source_png)
        atomic_write(script, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        run = Run(n, text, result.image, result.source_image, seconds, png, source_png, script, result)
        self.runs.append(run)
        for old in self.runs[:-KEEP_RESULTS]:
            old.result = None
        return run

    def find(self, number: int | None) -> Run:
        for run in self.runs:
            if run.number == number:
                return run
        raise SteerUsageError("nothing has run yet" if not self.runs else f"there is no run {number}", hint="press Run first")

    # -- pictures ------------------------------------------------------------------------------

    def words(self, run: Run) -> list[str]:
        """The prompt's words whose maps are worth a look (not "a", "and")."""
        from sampler.pictures import prompt_words

        return prompt_words(run.result) if run.result is not None else []

    def word_map(self, number: int, word: str, image: str = "edit") -> np.ndarray:
        """The word's DAAM heat map over the run's edited (or source) image, shown enlarged."""
        from sampler.pictures import overlay

        run = self.find(number)
        if run.result is None:
            raise SteerUsageError(f"run {number} is too old: its maps were let go", hint=f"only the last {KEEP_RESULTS} runs keep them")
        with self._lock:
            try:
                heat = run.result.token_map(word, image=image)
            except SteerError as e:
                raise SteerUsageError(f"{word}: {e.message}", hint=e.hint) from None
        base = run.image if image == "edit" else run.source_image
        return shown(overlay(base, heat))

    def save_text(self, text: str) -> Path:
        """The script being edited, as a file to download."""
        from energies.files import atomic_write

        name = Path(self.file).name if self.script else "page.edit"
        path = self.folder / "script" / name
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    def add_photo(self, path: str) -> Path:
        """A photo dropped on the page, copied into the session's folder under a name made from
        its bytes (a different photo never replaces it); it must open as an image."""
        from sampler.images import open_image

        src = Path(path)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
        dest = self.folder / "photos" / f"{src.stem[:40]}-{digest}{src.suffix.lower() or '.png'}"
        dest.parent.mkdir(exist_ok=True)
        open_image(src).close()  # not an image: a SteerError now, not at Run
        if not dest.exists():
            shutil.copyfile(src, dest)
        return dest


def shown(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> uint8, enlarged by a whole factor (nearest neighbour: a pixel stays a pixel)."""
    from sampler.pictures import enlarged

    return (np.clip(enlarged(image, side), 0, 1) * 255).round().astype(np.uint8)


def marked(image: np.ndarray, program, pending: tuple[float, float] | None = None) -> np.ndarray:
    """The shown image with the script's drags (handle, arrow, target) and move targets drawn on
    it, and a handle clicked but not yet given its target."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    w, h = im.size
    at = lambda p: (p[0] * w, p[1] * h)  # noqa: E731
    r = max(3, w // 64)

    def dot(p, colour):
        x, y = at(p)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline="white")

    for t in program.terms if program is not None else ():
        if t.kind == "drag":
            draw.line((*at(t.handle), *at(t.target)), fill="white", width=max(1, r // 2))
            dot(t.handle, "red")
            dot(t.target, "blue")
        elif t.kind == "move":
            x, y = at(t.to)
            draw.line((x - r, y - r, x + r, y + r), fill="blue", width=2)
            draw.line((x - r, y + r, x + r, y - r), fill="blue", width=2)
    if pending is not None:
        dot(pending, "red")
    return np.asarray(im)


EXAMPLE = """\
# Type here: the script is checked as you type. Run draws the source and the edit.
prompt "a red circle and a blue square"
seed 3
steps 12

centroid(token "circle") -> (0.75, 0.5)
keep appearance
"""

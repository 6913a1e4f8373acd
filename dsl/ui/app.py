"""The page (Gradio Blocks): the script, the images, the maps, the sliders, the history.

Only layout and wiring live here; what each control does is a plain function of dsl/ui/script.py
or a method of the LiveSession (dsl/ui/session.py), tested without a browser. Every handler's
mistakes are shown on the page (guarded): a SteerError as the command line renders it, anything
else as one line naming a bug, with its traceback in the server's log; the server never stops.
"""

from __future__ import annotations

import functools
import html
import logging
import traceback

import gradio as gr

from energies.errors import SteerError

from . import script as S
from .session import LiveSession, marked, shown

MAX_TERMS = 8  # terms with sliders; a longer script's further terms are edited as text
WEIGHT_MAX = 5.0  # the weight slider's range, 0..5, widened to take the script's own value
DRAG, MOVE = "drag: click the handle, then the target", "move the token's centroid: click the target"
NO_TOKEN = "(no token)"

CSS = """
#script textarea, .steer-message pre { font-family: ui-monospace, monospace; font-size: 13px; }
.steer-message pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 6px; border-radius: 4px; }
.steer-message .error { background: #fde8e8; color: #8a1010; }
.steer-message .ok { background: #e8f6e8; color: #0f5a0f; }
#source img, #edit img, #map img, #history-a img, #history-b img { image-rendering: pixelated; }
"""

log = logging.getLogger("steer.ui")


def message(text: str, ok: bool = True) -> str:
    return f'<div class="steer-message"><pre class="{"ok" if ok else "error"}">{html.escape(text)}</pre></div>'


def build(session: LiveSession) -> gr.Blocks:
    with gr.Blocks(title="steer") as page:
        run_number = gr.State(None)  # the run the images show
        pending = gr.State(None)  # a drag handle clicked, waiting for its target
        gr.Markdown("## steer: live editing\nType the script; Run draws the source and the edit. "
                    "Click the source image to add drag points; move a slider to rewrite a weight.")
        with gr.Row():
            with gr.Column(scale=5):
                text = gr.Textbox(session.text, lines=14, max_lines=40, label=session.file, elem_id="script")
                checked = gr.HTML(elem_id="check")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    photo = gr.UploadButton("Photo as source", file_types=["image"], elem_id="photo")
                    script_file = gr.DownloadButton("Download script", elem_id="download-script")
                slots = []
                with gr.Accordion("Weights and windows", open=True):
                    for i in range(MAX_TERMS):
                        with gr.Group(visible=False) as group:
                            weight = gr.Slider(0, WEIGHT_MAX, 1, step=0.05, label=f"term {i + 1}", elem_id=f"weight-{i}")
                            with gr.Row():
                                start = gr.Slider(0, 1, 0, step=0.05, label="window from", elem_id=f"start-{i}")
                                end = gr.Slider(0, 1, 1, step=0.05, label="window to", elem_id=f"end-{i}")
                        slots.append((group, weight, start, end))
            with gr.Column(scale=7):
                status = gr.HTML(elem_id="status")
                with gr.Row():
                    source = gr.Image(label="source (click to place points)", format="png", interactive=False, elem_id="source")
                    edit = gr.Image(label="edit", format="png", interactive=False, elem_id="edit")
                with gr.Row():
                    mode = gr.Radio([DRAG, MOVE], value=DRAG, label="a click adds", elem_id="mode")
                    token = gr.Dropdown([NO_TOKEN], value=NO_TOKEN, label="token (drag within it, or the one to move)", elem_id="token")
                with gr.Row():
                    with gr.Column():
                        words = gr.Radio([], label="attention map of the word", elem_id="words")
                        over = gr.Radio(["edit", "source"], value="edit", label="over", elem_id="over")
                        image_file = gr.DownloadButton("Download image", elem_id="download-image", visible=False)
                    word_map = gr.Image(label="map", format="png", interactive=False, elem_id="map")
        with gr.Accordion("History: compare two runs", open=False, elem_id="history"):
            with gr.Row():
                pick_a = gr.Dropdown([], label="run A", elem_id="pick-a")
                pick_b = gr.Dropdown([], label="run B", elem_id="pick-b")
            with gr.Row():
                image_a = gr.Image(label="A", format="png", interactive=False, elem_id="history-a")
                image_b = gr.Image(label="B", format="png", interactive=False, elem_id="history-b")
            with gr.Row():
                script_a = gr.Code(label="script A", interactive=False)
                script_b = gr.Code(label="script B", interactive=False)
            restore = gr.Button("Edit run A's script again")

        slider_outputs = [c for slot in slots for c in slot]

        @guarded(status)
        def on_text(text_now, number, handle):
            c = session.check(text_now)
            out = {checked: message(c.message(), c.ok), script_file: session.save_text(text_now)}
            if c.program is not None:
                out.update(_slot_updates(slots, c.slots))
                out[token] = gr.update(choices=[NO_TOKEN] + _words_of(c.program))
            if number is not None:
                out[source] = marked(shown(session.find(number).source_image), c.program, handle)
            return out

        @guarded(status)
        def on_run(text_now, handle, progress=gr.Progress(track_tqdm=True)):
            r = session.run(text_now)
            choices = [(x.name, x.number) for x in session.runs]
            word_list = session.words(r)
            return {
                status: message(f"{r.name}: {r.image.shape[1]}x{r.image.shape[0]} px"),
                run_number: r.number,
                source: marked(shown(r.source_image), session.check(text_now).program, handle),
                edit: shown(r.image),
                words: gr.update(choices=word_list, value=None),
                word_map: None,
                image_file: gr.update(value=str(r.png), visible=True),
                pick_a: gr.update(choices=choices),
                pick_b: gr.update(choices=choices),
            }

        @guarded(status)
        def on_click(evt: gr.SelectData, text_now, number, handle, how, word):
            r = session.find(number)
            h, w = shown(r.source_image).shape[:2]
            point = (S.fraction(evt.index[0], w), S.fraction(evt.index[1], h))
            word = None if word in (None, NO_TOKEN) else word
            if how == MOVE:
                if word is None:
                    return {status: message("choose the token to move first", ok=False)}
                return {text: S.add_line(text_now, S.move_line(word, point)), pending: None,
                        status: message(f"added the centroid target ({point[0]:g}, {point[1]:g})")}
            if handle is None:
                program = session.check(text_now).program
                return {pending: point, source: marked(shown(r.source_image), program, point),
                        status: message(f"handle at ({point[0]:g}, {point[1]:g}): now click the target")}
            line = S.drag_line(handle, point, word)
            return {text: S.add_line(text_now, line), pending: None, status: message(f"added: {line}")}

        def on_weight(i):
            @guarded(status)
            def handler(text_now, value):
                return {text: S.set_weight(text_now, i, value, session.file), status: ""}
            return handler

        def on_window(i):
            @guarded(status)
            def handler(text_now, a, b):
                return {text: S.set_window(text_now, i, a, b, session.file), status: ""}
            return handler

        @guarded(status)
        def on_word(number, word, image):
            if not word:
                return {}
            return {word_map: session.word_map(number, word, image)}

        @guarded(status)
        def on_photo(file, text_now):
            path = session.add_photo(file if isinstance(file, str) else file.name)
            new = S.set_setting(text_now, "source", str(path), session.file)
            return {text: new, status: message(f"the source is now {path.name}; Run inverts it (once: the inversion is cached)")}

        @guarded(status)
        def on_pick(number, which):
            if number is None:
                return {}
            r = session.find(number)
            image, code = (image_a, script_a) if which == "a" else (image_b, script_b)
            return {image: shown(r.image, 256), code: r.text}

        @guarded(status)
        def on_restore(number):
            if number is None:
                return {status: message("choose run A first", ok=False)}
            return {text: session.find(number).text}

        text.change(on_text, [text, run_number, pending], [checked, script_file, *slider_outputs, token, source, status],
                    trigger_mode="always_last", show_progress="hidden")
        page.load(on_text, [text, run_number, pending], [checked, script_file, *slider_outputs, token, source, status])
        run.click(on_run, [text, pending],
                  [status, run_number, source, edit, words, word_map, image_file, pick_a, pick_b], concurrency_limit=1)
        source.select(on_click, [text, run_number, pending, mode, token], [text, pending, source, status])
        for i, (_, weight, start, end) in enumerate(slots):
            weight.release(on_weight(i), [text, weight], [text, status])
            for slider in (start, end):
                slider.release(on_window(i), [text, start, end], [text, status])
        words.change(on_word, [run_number, words, over], [word_map, status])
        over.change(on_word, [run_number, words, over], [word_map, status])
        photo.upload(on_photo, [photo, text], [text, status])
        pick_a.change(functools.partial(on_pick, which="a"), [pick_a], [image_a, script_a, status])
        pick_b.change(functools.partial(on_pick, which="b"), [pick_b], [image_b, script_b, status])
        restore.click(on_restore, [pick_a], [text, status])
    return page


def guarded(status):
    """A handler whose mistakes go to the page's status box, never out of the server."""

    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SteerError as e:
                return {status: message(e.render(), ok=False)}
            except Exception as e:  # a bug: said on the page in one line, its traceback in the log
                log.error("%s", traceback.format_exc())
                return {status: message(f"internal error (a bug in steer; the server's log has its traceback): "
                                        f"{type(e).__name__}: {e}", ok=False)}
        return handler

    return wrap


def _slot_updates(slots, terms: list[S.TermSlot]) -> dict:
    out = {}
    for i, (group, weight, start, end) in enumerate(slots):
        if i >= len(terms):
            out[group] = gr.update(visible=False)
            continue
        t = terms[i]
        out[group] = gr.update(visible=True)
        out[weight] = gr.update(value=t.weight, label=f"{i + 1}. {t.label}  (weight)",
                                minimum=min(0.0, t.weight), maximum=max(WEIGHT_MAX, t.weight))
        shown_default = "" if t.window_set else " (default)"
        out[start] = gr.update(value=t.window[0], label=f"window from{shown_default}")
        out[end] = gr.update(value=t.window[1], label=f"window to{shown_default}")
    return out


def _words_of(program) -> list[str]:
    import dsl

    try:
        return dsl.prompt_words(program.settings.prompt) if program.settings.prompt else []
    except SteerError:
        return []


def serve(session: LiveSession, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the page: (page, url), the server in a thread; with block=True, wait until Ctrl-C."""
    page = build(session)
    page.queue(default_concurrency_limit=1)
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                            allowed_paths=[str(session.folder)], css=CSS, footer_links=[])
    if block:
        print(f"steer ui: open {url} (Ctrl-C stops it); runs and uploads go to {session.folder}", flush=True)
        page.block_thread()
    return page, url

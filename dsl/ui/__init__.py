"""`steer ui`: a web page for live editing, served on the local machine (Gradio).

The script in an editor, checked as it is typed; Run draws the source and the edit side by side
(re-runs reuse the model and the source pass, as the REPL does); clicks on the source image add
drag lines or centroid targets; a slider per term rewrites its weight and window in the text; a
word's attention map; the history of runs, two side by side; downloads of the image (its
program embedded) and of the script; a photo dropped in as the source.

    script.py   the script: checking, and rewriting it for sliders and clicks (plain functions)
    session.py  the Editor kept across runs, the run history, the pictures shown
    app.py      the page: layout and wiring only
"""

from __future__ import annotations

from energies.errors import SteerUsageError

DEFAULT_HOST = "127.0.0.1"  # the loopback address: the page runs scripts and reads files, so it is not offered to the network unless asked


def serve(script: str | None = None, model: str | None = None, host: str = DEFAULT_HOST, port: int | None = None,
          device: str = "auto", dtype: str = "fp32", low_memory: bool = False) -> int:
    """Serve the page until Ctrl-C."""
    from sampler.backbones import check_device

    from .session import LiveSession

    try:
        from . import app
    except ImportError as e:
        raise SteerUsageError(f"the web page needs gradio ({e})", hint="pip install 'steer-edit[ui]'") from None
    check_device(device)  # before the page, not at the first Run
    session = LiveSession(script, model=model, device=device, dtype=dtype, low_memory=low_memory)
    try:
        app.serve(session, host, port, block=True)
    except OSError as e:  # the port is taken, or the address is not this machine's
        session.forget_folder_if_empty()
        raise SteerUsageError(f"cannot serve on {host}:{port or 'the default port'}: {e}", hint="choose another --port") from None
    return 0

"""Screenshots of `steer ui` (docs/images/ui*.png) and the time from Run to the image.

    OMP_NUM_THREADS=1 python docs/make_ui_screenshots.py [--repeats 3] [--no-pictures]

Serves the page on a free loopback port and drives Debian's headless chromium through its
chromedriver, as tests/test_ui_browser.py does. It writes
  ui.png        after a run: the script, the weight sliders, the source with a drag drawn on it,
                the edit, and the attention map of "circle";
  ui-error.png  a script with a mistake, shown at its line and column;
  ui-history.png two runs side by side;
and prints, in seconds, from the click on Run to the image on the page: the first run (the model
loads, the source pass, the edit pass), a run of a new seed (source and edit pass) and a run
after a weight change (the edit pass only, the source pass reused as in the REPL), each repeated.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_ui_browser import browser, free_port, script_box, text_of, type_script, wait_for  # noqa: E402

OUT = ROOT / "docs" / "images"
SCRIPT = """\
# Move the circle to the right; everything keeps its look.
prompt "a red circle and a blue square"
seed 3

centroid(token "circle") -> (0.75, 0.5)
keep appearance
"""


DRAG_SCRIPT = """\
# Click the token "circle", then the circle's centre, then where it goes: the drag line is added.
prompt "a red circle and a blue square"
seed 5
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--no-pictures", action="store_true", help="only the timing")
    args = ap.parse_args(argv)

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from dsl.ui import script as S
    from dsl.ui.app import serve
    from dsl.ui.session import LiveSession

    import tempfile

    work = tempfile.TemporaryDirectory(prefix="steer-ui-shots-")
    session = LiveSession(model=args.model, device="cpu", folder=work.name)
    page, url = serve(session, "127.0.0.1", free_port(), block=False)
    d = browser(1400, 1250)
    times: dict[str, list[float]] = {"first run (model load + source + edit)": [], "new seed (source + edit)": [],
                                     "weight change (edit only)": []}

    def run_and_time(what: str) -> float:
        n = len(session.runs) + 1
        t0 = time.perf_counter()
        d.find_element(By.ID, "run").click()
        wait_for(d, lambda: f"run {n} (" in text_of(d, "#status"), 300)
        wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#edit img"))
        seconds = time.perf_counter() - t0
        times[what].append(seconds)
        return seconds

    def set_script(text: str):
        type_script(d, text)
        wait_for(d, lambda: "ok (" in text_of(d, "#check"))

    try:
        d.get(url)
        wait_for(d, lambda: "ok (" in text_of(d, "#check"))  # the page is up, its example checked
        set_script(SCRIPT)
        run_and_time("first run (model load + source + edit)")
        for k in range(args.repeats):
            set_script(SCRIPT.replace("seed 3", f"seed {10 + k}"))
            run_and_time("new seed (source + edit)")
        set_script(SCRIPT)
        run_and_time("new seed (source + edit)")  # seed 3 again, left out of the table below: its source pass is in memory
        times["new seed (source + edit)"].pop()
        for k in range(args.repeats):
            set_script(S.set_weight(SCRIPT, 0, 1.5 + 0.5 * k))
            run_and_time("weight change (edit only)")
        if not args.no_pictures:
            pictures(d, session, ActionChains, By)
    finally:
        d.quit()
        page.close()
        work.cleanup()
    print(f"from the click on Run to the image, {args.model} model, {session.runs[-1].result.steps} steps, CPU, "
          f"OMP_NUM_THREADS={__import__('os').environ.get('OMP_NUM_THREADS', 'unset')}:")
    for what, xs in times.items():
        print(f"  {what:40s} " + ", ".join(f"{x:.2f}" for x in xs) + (f"   median {statistics.median(xs):.2f} s" if xs else ""))
    return 0


def pictures(d, session, ActionChains, By):
    # the main view: examples/drag.edit made by clicks (the token, the circle's centre, the target), then run
    type_script(d, DRAG_SCRIPT)
    wait_for(d, lambda: "ok (0 terms)" in text_of(d, "#check"))
    n = len(session.runs) + 1
    d.find_element(By.ID, "run").click()
    wait_for(d, lambda: f"run {n} (" in text_of(d, "#status"), 300)
    d.find_element(By.CSS_SELECTOR, "#token input").click()
    wait_for(d, lambda: [e for e in d.find_elements(By.CSS_SELECTOR, "[role=option]") if e.text == "circle"])[0].click()
    # the handle on the circle the model drew (the world's detector finds it), the target a quarter
    # of the image up or down, towards the middle (the square of this seed sits beside the circle,
    # not above or below it): fixed clicks missed the circle once the model changed
    from sampler.shapes import world as W

    found = W.find(W.detect(session.runs[-1].result.source_image), "red", "circle")
    hx, hy = found.centroid if found is not None else (0.5, 0.5)
    for x, y in ((hx, hy), (hx, hy + (0.25 if hy < 0.5 else -0.25))):
        source = d.find_element(By.CSS_SELECTOR, "#source img")
        w, h = source.size["width"], source.size["height"]
        ActionChains(d).move_to_element_with_offset(source, round((x - 0.5) * w), round((y - 0.5) * h)).click().perform()
        time.sleep(1)
    wait_for(d, lambda: "drag (" in script_box(d).get_attribute("value"))
    wait_for(d, lambda: "ok (1 term)" in text_of(d, "#check"))
    n = len(session.runs) + 1
    d.find_element(By.ID, "run").click()
    wait_for(d, lambda: f"run {n} (" in text_of(d, "#status"), 300)
    word = [e for e in d.find_elements(By.CSS_SELECTOR, "#words label") if e.text.strip() == "circle"][0]
    word.click()
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#map img"))
    time.sleep(1)
    d.save_screenshot(str(OUT / "ui.png"))

    # the history: two runs side by side
    d.find_element(By.XPATH, "//*[@id='history']//*[contains(text(), 'History')]").click()
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#pick-a input"))
    for pick, number in (("#pick-a", n - 1), ("#pick-b", n)):
        d.find_element(By.CSS_SELECTOR, f"{pick} input").click()
        option = wait_for(d, lambda: [e for e in d.find_elements(By.CSS_SELECTOR, "[role=option]") if e.text.startswith(f"run {number} (")])
        option[0].click()
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#history-b img"))
    time.sleep(1)
    d.execute_script("document.querySelector('#history').scrollIntoView()")
    d.save_screenshot(str(OUT / "ui-history.png"))

    # a mistake, at its line and column
    d.execute_script("window.scrollTo(0, 0)")
    type_script(d, SCRIPT.replace('token "circle") -> (0.75, 0.5)', 'token "circel") -> (0.75, 0.5)'))
    wait_for(d, lambda: 'token "circel"' in text_of(d, "#check"))
    time.sleep(0.5)
    d.save_screenshot(str(OUT / "ui-error.png"))
    for name in ("ui.png", "ui-history.png", "ui-error.png"):
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    sys.exit(main())

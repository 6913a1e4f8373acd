"""The web page (steer ui) in a real browser: Debian's headless chromium, driven by selenium
through Debian's chromedriver (never a browser or driver downloaded at run time).

One walk through the page, as a user would: a script with a mistake shows the positioned
message, the fix clears it, Run shows the images, two clicks on the source add a drag line to
the script, and a slider rewrites a weight. Skipped, with the reason, where no chromium is
installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"no browser to drive: {', '.join(missing)} not installed "
                                                       "(apt-get install chromium chromium-driver)")

WAIT = 60  # s: the first Run loads the model


def browser(width: int = 1400, height: int = 1100):
    """Headless chromium through Debian's chromedriver; Selenium Manager kept offline."""
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(shapes_path, tmp_path_factory):
    """The page, served on a free loopback port in this process."""
    pytest.importorskip("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from dsl.ui.app import serve
    from dsl.ui.session import LiveSession

    session = LiveSession(model=shapes_path, device="cpu", folder=tmp_path_factory.mktemp("ui"))
    page, url = serve(session, "127.0.0.1", free_port(), block=False)
    yield url
    page.close()


@pytest.fixture(scope="module")
def driver():
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    d = browser()
    yield d
    d.quit()


def script_box(d):
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, "#script textarea")


def type_script(d, text: str):
    from selenium.webdriver.common.keys import Keys

    box = script_box(d)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def wait_for(d, what, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda _: what())


def text_of(d, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = d.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def test_the_page_checks_runs_drags_and_reweights(page_url, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    d = driver
    d.get(page_url)
    wait_for(d, lambda: "ok (" in text_of(d, "#check"))  # the example script, checked on load

    # a mistake: shown at its line and column, with the caret and the hint, as the command line does
    type_script(d, 'prompt "a red circle and a blue square"\nsteps 4\ncentroid(token "dog") -> (0.7, 0.5)\n')
    wait_for(d, lambda: 'token "dog"' in text_of(d, "#check"))  # checked as typed: the last check is of the whole text
    shown = text_of(d, "#check")
    assert 'page.edit:3:10: error: token "dog" is not in the prompt' in shown
    assert '^~~~~~~~~~~' in shown and "hint: the prompt's words are" in shown
    d.find_element(By.ID, "run").click()  # Run refuses it on the page too, and the page stays usable
    wait_for(d, lambda: 'page.edit:3:10: error: token "dog"' in text_of(d, "#status"))

    # fixed: the message goes, Run draws the source and the edit
    type_script(d, 'prompt "a red circle and a blue square"\nseed 5\nsteps 4\ncentroid(token "circle") -> (0.7, 0.5)\n')
    wait_for(d, lambda: "ok (1 term)" in text_of(d, "#check"))
    d.find_element(By.ID, "run").click()
    wait_for(d, lambda: re.search(r"run 1 \(\d+\.\d s\)", text_of(d, "#status")))
    source = wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#source img"))[0]
    assert d.find_elements(By.CSS_SELECTOR, "#edit img")
    assert source.get_attribute("naturalWidth") == "384"  # 32 px, enlarged 12 times

    # two clicks on the source: a handle, then a target; the drag line appears in the script
    w = source.size["width"]
    ActionChains(d).move_to_element_with_offset(source, -w // 4, 0).click().perform()  # offsets from the centre
    wait_for(d, lambda: "now click the target" in text_of(d, "#status"))
    source = d.find_element(By.CSS_SELECTOR, "#source img")
    ActionChains(d).move_to_element_with_offset(source, w // 4, 0).click().perform()
    wait_for(d, lambda: "drag (" in script_box(d).get_attribute("value"))
    line = re.search(r"drag \(([\d.]+), ([\d.]+)\) -> \(([\d.]+), ([\d.]+)\)", script_box(d).get_attribute("value"))
    hx, hy, tx, ty = map(float, line.groups())
    assert hx == pytest.approx(0.25, abs=0.03) and tx == pytest.approx(0.75, abs=0.03)
    assert hy == pytest.approx(0.5, abs=0.03) and ty == pytest.approx(0.5, abs=0.03)
    wait_for(d, lambda: "ok (2 terms)" in text_of(d, "#check"))  # the new line is checked like a typed one

    # the first term's weight slider (0..5), clicked at its middle: the weight 2.5 is written into the script
    slider = d.find_element(By.CSS_SELECTOR, "#weight-0 input[type=range]")
    ActionChains(d).move_to_element(slider).click().perform()
    wait_for(d, lambda: 'centroid(token "circle") -> (0.7, 0.5) * 2.5' in script_box(d).get_attribute("value"))
    assert d.find_element(By.CSS_SELECTOR, "#weight-0 input[type=number]").get_attribute("value") == "2.5"

    # a photo dropped on "Photo as source" becomes the script's source line, checked like the rest
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(photo)
    d.find_element(By.CSS_SELECTOR, "#photo input[type=file], input[type=file]").send_keys(str(photo))
    wait_for(d, lambda: re.search(r'source ".*photo-[0-9a-f]{12}\.png"', script_box(d).get_attribute("value")))
    wait_for(d, lambda: "ok (2 terms)" in text_of(d, "#check"))

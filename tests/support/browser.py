"""A headless Chromium that drives a served Gradio 6 app the way a person does: upload, type, click, read.

Selenium with Debian's `chromium` and `chromium-driver`: both come from one source package, so the driver always
matches the browser, and nothing is downloaded at run time (the driver path is given, so Selenium Manager never
runs; SE_OFFLINE forbids it anyway). Playwright worked here too, but it expects the Chromium build of its own
release (159 for 1.65) and this machine's is whatever Debian ships (156 now).

Selectors follow Gradio 6.31's DOM; `elem_id` lands on the component's outer block (on the <button> itself for
gr.Button), so every lookup is scoped under `#elem_id`.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

# Debian's real binary first: /usr/bin/chromium is a shell wrapper that adds flags from /etc/chromium.d.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)

# Without the background-networking flags Chromium keeps dialing Google services, whose connections this closed
# network refuses; a fresh --user-data-dir per session keeps runs independent. /dev/shm is small in containers.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)

# Seconds. Generous: the machine has 2 cores shared with training jobs, and a model's first prediction is slow.
PAGE_LOAD_TIMEOUT = 60  # navigation
RENDER_TIMEOUT = 30  # Gradio's JS mounting the Blocks and lazily loading each component
ACTION_TIMEOUT = 15  # an element to appear, an upload to finish, a tab to switch
RESULT_TIMEOUT = 30  # default for read_label / read_error: the app's function running
QUIET_S = 0.2  # an output counts as settled once nothing inside it changed for this long
POLL_S = 0.1

# Installed on each page: remembers which elements (by id, with all their id'd ancestors) changed since the last
# click, and when, so read_label never returns the previous prediction; marks toasts already shown as stale; counts
# the file uploads (fetch to /gradio_api/upload) started and finished, the body read, so upload_image knows the end.
_OBSERVER_JS = """
if (!window.__harness) {
  const h = {armed: false, dirty: new Set(), last: {}, uploads: {started: 0, done: 0}};
  const fetch = window.fetch;
  window.fetch = function (...args) {
    const reply = fetch.apply(this, args);
    if (!/\\/gradio_api\\/upload\\?/.test(String((args[0] && args[0].url) || args[0]))) return reply;
    h.uploads.started++;
    const done = () => { h.uploads.done++; };
    return reply.then(r => { r.clone().arrayBuffer().then(done, done); return r; }, e => { done(); throw e; });
  };
  h.obs = new MutationObserver(records => {
    const now = performance.now();
    for (const r of records) {
      for (let n = r.target.nodeType === 1 ? r.target : r.target.parentElement; n; n = n.parentElement) {
        if (n.id) { h.dirty.add(n.id); h.last[n.id] = now; }
      }
    }
  });
  h.obs.observe(document.documentElement,
                {subtree: true, childList: true, characterData: true, attributes: true});
  h.arm = () => {
    document.querySelectorAll('.toast-message-item').forEach(e => e.setAttribute('data-harness-stale', ''));
    h.obs.takeRecords();
    h.dirty.clear();
    h.armed = true;
  };
  window.__harness = h;
}
"""

# While Gradio 6 loads the components' modules, a status tracker (the spinner, "Loading...") is a direct child of
# .main; it goes when the app is ready. Not the footer: footer_links=[] leaves it out.
_RENDERED_JS = """
const main = document.querySelector('gradio-app .gradio-container .main');
return !!main && !!main.querySelector('main.contain')
    && !main.querySelector(':scope > [data-testid="status-tracker"]:not(.hide)');
"""

# An upload into #id finished and its preview settled (same content twice gives the same src, so no src check).
_UPLOADED_JS = """
const [id, before, quiet, preview] = arguments;
const h = window.__harness, el = document.getElementById(id), u = h.uploads;
if (!el || u.done <= before || u.started !== u.done) return false;
if (!preview) return true;
if (!h.dirty.has(id) || performance.now() - (h.last[id] || 0) < quiet * 1000) return false;
const images = [...el.querySelectorAll('img')];
return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
"""

# The top class of a gr.Label once its output settled, else null. The heading is absent with show_heading=False.
_LABEL_JS = """
const [id, quiet] = arguments;
const h = window.__harness, el = document.getElementById(id);
if (!el || (h.armed && !h.dirty.has(id))) return null;
if (performance.now() - (h.last[id] || 0) < quiet * 1000) return null;
const tracker = el.querySelector('[data-testid="status-tracker"]');
if (tracker && !tracker.classList.contains('hide')) return null;
const top = el.querySelector('[data-testid="label-output-value"]') || el.querySelector('dl dt');
const text = top ? top.textContent.trim() : '';
return text || null;
"""

# Gradio 6 groups toasts by type: one .toast-item per type, one .toast-message-item per message in it.
_ERROR_JS = """
const items = [...document.querySelectorAll(
    '.toast-message-item.error:not([data-harness-stale]) [data-testid="toast-text"]')];
return items.length ? items[items.length - 1].textContent.trim() : null;
"""


def _first_existing(env: str, candidates: tuple[str, ...]) -> str | None:
    paths = (os.environ[env],) if os.environ.get(env) else candidates
    return next((p for p in paths if Path(p).is_file() and os.access(p, os.X_OK)), None)


def chromium_path() -> str | None:
    """The Chromium binary ($CHROMIUM_BIN overrides), or None."""
    return _first_existing("CHROMIUM_BIN", CHROMIUM_CANDIDATES)


def chromedriver_path() -> str | None:
    """The chromedriver binary ($CHROMEDRIVER overrides), or None."""
    return _first_existing("CHROMEDRIVER", CHROMEDRIVER_CANDIDATES)


def browser_available() -> str | None:
    """None when a headless browser can be started, else why not (for pytest.skip)."""
    if chromium_path() is None:
        return "Chromium is not installed (apt-get install chromium chromium-driver)"
    if chromedriver_path() is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


class GradioPage:
    """A browser tab on a Gradio 6 app, with the few actions the demo tests need. `driver` is the Selenium one."""

    def __init__(self, driver):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self._by, self._wait_cls, self._timeout_exc = By, WebDriverWait, TimeoutException
        self._ignored = (StaleElementReferenceException,)  # Svelte may swap a node while we poll it

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _wait(self, condition, timeout: float, what: str):
        """condition(driver) until truthy; on timeout an AssertionError that says what was awaited and what shows."""
        try:
            return self._wait_cls(self.driver, timeout, POLL_S, self._ignored).until(condition)
        except self._timeout_exc:
            try:
                toast = self.driver.execute_script(_ERROR_JS)
            except Exception:  # the page itself is gone; the timeout is the news
                toast = None
            shown = f"; error toast: {toast!r}" if toast else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what} on {self.driver.current_url}{shown}") \
                from None

    def _element(self, css: str, timeout: float = ACTION_TIMEOUT, visible: bool = True):
        def find(driver):
            for el in driver.find_elements(self._by.CSS_SELECTOR, css):
                if not visible or el.is_displayed():
                    return el
            return None

        return self._wait(find, timeout, f"{'visible ' if visible else ''}element {css!r}")

    def _click(self, el) -> None:
        """Scrolled to the middle of the view, so no toast (top right) covers it; a JS click if something still does."""
        from selenium.common.exceptions import ElementClickInterceptedException

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        try:
            el.click()
        except ElementClickInterceptedException:
            self.driver.execute_script("arguments[0].click()", el)

    # -- actions --------------------------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Load the app and wait until Gradio has rendered it: the Blocks' <main> is there and the page-wide
        "Loading..." spinner is gone, which happens once every component's lazily imported module has loaded."""
        self.driver.get(url)
        self._wait(lambda d: d.execute_script(_RENDERED_JS), RENDER_TIMEOUT, "Gradio to render the app")
        self.driver.execute_script(_OBSERVER_JS)

    def upload_image(self, elem_id: str, path: str | os.PathLike, preview: bool = True) -> None:
        """Give the gr.Image's hidden file input a file; return once Gradio uploaded it and shows its preview (or,
        with `preview=False`, for a file that is no image, once the upload itself finished)."""
        file_input = self._element(f"#{elem_id} input[type=file]", visible=False)
        before = self.driver.execute_script(
            _OBSERVER_JS + "const h = window.__harness; h.dirty.delete(arguments[0]); return h.uploads.done;",
            elem_id)
        file_input.send_keys(str(Path(path).resolve()))
        self._wait(lambda d: d.execute_script(_UPLOADED_JS, elem_id, before, QUIET_S, preview), ACTION_TIMEOUT,
                   f"the upload into #{elem_id} to finish and show")

    def type_text(self, elem_id: str, text: str) -> None:
        """Replace a gr.Textbox's content by typing (real key events, which Gradio listens to).

        A newline is an Enter key press: in a one-line Textbox that submits it.
        """
        from selenium.webdriver.common.keys import Keys

        box = self._element(f"#{elem_id} textarea, #{elem_id} input:not([type=file])")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)
        self._wait(lambda d: box.get_property("value") == text, ACTION_TIMEOUT, f"#{elem_id} to hold the text")

    def click(self, elem_id: str) -> None:
        """Click a gr.Button. Outputs and toasts shown before this click count as stale for read_label/read_error."""
        button = self._element(f"#{elem_id}")
        self._wait(lambda d: button.is_enabled(), ACTION_TIMEOUT, f"#{elem_id} to be enabled")
        self.driver.execute_script(_OBSERVER_JS + "window.__harness.arm();")
        self._click(button)

    def select_tab(self, label: str) -> None:
        """Show the gr.Tab whose visible label is `label`, through the "More tabs" menu when it overflowed there.

        Gradio 6 renders a second, aria-hidden copy of the tab buttons (without role="tab") to measure overflow, and
        moves a tab picked from the menu into the tab bar.
        """
        def shown(css):
            return lambda d: next((e for e in d.find_elements(self._by.CSS_SELECTOR, css)
                                   if e.is_displayed() and e.text.strip() == label), None)

        tab, menu_item = shown('[role="tablist"] [role="tab"]'), shown(".overflow-dropdown button")
        target = tab(self.driver)
        if target is None:
            more = [e for e in self.driver.find_elements(self._by.CSS_SELECTOR, 'button[aria-label="More tabs"]')
                    if e.is_displayed()]
            if more:
                self._click(more[0])
            target = self._wait(lambda d: tab(d) or menu_item(d), ACTION_TIMEOUT, f"tab {label!r}")
        self._click(target)
        self._wait(lambda d: any(e.get_attribute("aria-selected") == "true" and e.text.strip() == label
                                 for e in d.find_elements(self._by.CSS_SELECTOR, '[role="tab"]')),
                   ACTION_TIMEOUT, f"tab {label!r} to be selected")

    def read_label(self, elem_id: str, timeout: float = RESULT_TIMEOUT) -> str:
        """The top class a gr.Label shows once the last click's prediction settled.

        Fails at once, with its text, if a gr.Error toast appears instead.
        """
        def settled(driver):
            error = driver.execute_script(_ERROR_JS)
            if error:
                raise AssertionError(f"the app raised gr.Error instead of filling #{elem_id}: {error!r}")
            return driver.execute_script(_LABEL_JS, elem_id, QUIET_S)

        return self._wait(settled, timeout, f"a prediction in #{elem_id}")

    def read_error(self, timeout: float = RESULT_TIMEOUT) -> str:
        """The message of the newest gr.Error toast shown since the last click."""
        return self._wait(lambda d: d.execute_script(_ERROR_JS), timeout, "a gr.Error toast")

    def screenshot(self, path: str | os.PathLike, full_page: bool = True) -> Path:
        """Save a PNG of the page (all of it, not just the 1280x900 view, unless full_page=False)."""
        path = Path(path)
        if full_page:
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot",
                                               {"format": "png", "captureBeyondViewport": True})
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path


@contextmanager
def headless_page():
    """A GradioPage in a fresh headless Chromium with an empty profile; the browser and profile go afterwards."""
    reason = browser_available()
    if reason:
        raise RuntimeError(reason)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hftransfer-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver_path()))
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        driver.set_script_timeout(ACTION_TIMEOUT)
        yield GradioPage(driver)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

"""A student's path in a real browser: JupyterLab, the notebooks and the training panel, end to end.

JupyterLab starts from the project's own environment on loopback (a free port, a random token, a temporary
copy of the notebooks, the smoke profile); Debian's Chromium, driven headless by Playwright, opens a notebook
at 1280x800, runs all cells and uses the TrainPanel as a student would: change the learning rate and the
epochs, Train, watch the live curves and the runs table, Stop a longer run, Resume it. Screenshots of the
panel and the window before and after training, and the browser console log, land in tests/artifacts/
(ignored by git); when a check fails, the page's screenshot and JupyterLab's log land there too.

Needs Debian's Chromium (`apt-get install chromium`) and the `playwright` package (the dev extra); Playwright's
own browser download is never used. Without them the tests are skipped, unless MP3KIT_REQUIRE_BROWSER=1 (CI
sets it), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "tests" / "artifacts"
VIEWPORT = {"width": 1280, "height": 800}  # a laptop-sized window
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Every wait is bounded; these are generous because the machines that run the suite are small and shared.
LAB_START_S = 90
OPEN_S = 90
RUN_ALL_S = 240
TRAIN_S = 150
ACTION_S = 30
POLL_S = 2  # how often a long wait looks for dialogs and error outputs while it waits
START_S = 15  # a Run All that has not started a cell by then was dropped
RUN_ALL_TRIES = 3
# Dialogs JupyterLab may still open; the Select Kernel one is accepted (it picks the notebook's own kernel).
HARMLESS_DIALOGS = ("Select Kernel",)
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
WIDGET_TROUBLE = ("Error displaying widget", "Loading widget", "Failed to load model class", "model not found")
# JavaScript: the texts of the notebook's outputs that contain one of `needles`.
OUTPUTS_WITH_NEEDLES = """[...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')]
    .map(e => e.textContent).filter(t => needles.some(n => t.includes(n)))"""
# JavaScript: the status bar's kernel item reads "<kernel name> | Idle" once a kernel is connected and idle.
KERNEL_IDLE = """/^(?!No Kernel).+ \\| Idle$/.test(
    document.querySelector('.jp-StatusBar-TextItem[title^="Change kernel"]')?.textContent.trim() ?? '')"""
# JavaScript: the notebook's code cell prompts, "[ ]:" before a run, "[*]:" while queued or running, "[3]:" after.
PROMPTS = "[...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]"
# A full-width widget with the standard 2 px margin ends 2 px past its box: nobody sees that, but more is clipping.
LAYOUT_SLACK_PX = 4
PANEL_CONTROLS = ("Model", "Optimizer", "Learning rate", "Epochs", "Batch size", "Augment", "Eval every")

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a browser, JupyterLab and kernels


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_missing() -> str | None:
    """Return why the browser tests cannot run here, or None."""
    if _chromium() is None:
        return "Chromium is not installed: `apt-get install chromium` (Debian) enables the browser tests"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `pip install -e .[dev]` enables the browser tests"
    return None


@pytest.fixture(scope="module")
def browser():
    """Launch headless Chromium through Playwright (skipped when missing, failed when MP3KIT_REQUIRE_BROWSER=1)."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("MP3KIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MP3KIT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=ACTION_S * 1000)  # the default 5 s is short on a busy 2-core machine
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class WaitTimeout(AssertionError):
    """A bounded wait on the page ran out."""


class Lab:
    """A JupyterLab server in its own process group, on loopback, serving a temporary copy of the notebooks."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root = workdir / "notebooks"
        self.runs_dir = workdir / "runs"
        self.log_path = workdir / "jupyterlab.log"
        self.token = secrets.token_hex(24)
        self.process = None
        self.url = None

    def start(self) -> None:
        """Start JupyterLab and wait until its REST API answers."""
        self.root.mkdir(parents=True)
        for notebook in NOTEBOOKS.glob("*.ipynb"):
            _copy_without_outputs(notebook, self.root / notebook.name)
        settings = self.workdir / "lab-settings"
        # No "get notified about official Jupyter news?" toast, and no update check over the network.
        _write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                    {"fetchNews": "false", "checkForUpdates": False})
        env = dict(os.environ)
        # The student's kernel: inline plots and progress bars, not the test session's Agg backend and quiet mode.
        for name in ("MPLBACKEND", "MP3KIT_QUIET"):
            env.pop(name, None)
        env.update(MP3KIT_PROFILE="smoke", MP3KIT_RUNS_DIR=str(self.runs_dir),
                   MP3KIT_FIGURES_DIR=str(self.workdir / "figures"),
                   JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(self.workdir / "workspaces"),
                   JUPYTER_CONFIG_DIR=str(self.workdir / "jupyter-config"),
                   JUPYTER_RUNTIME_DIR=str(self.workdir / "jupyter-runtime"), IPYTHONDIR=str(self.workdir / "ipython"))
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={_free_port()}",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # containers and CI run as root
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        info = self.workdir / "jupyter-runtime" / f"jpserver-{self.process.pid}.json"
        deadline = time.monotonic() + LAB_START_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not answer within {LAB_START_S} s:\n{self.log_tail()}")
            if info.exists():
                try:
                    self.url = json.loads(info.read_text())["url"].rstrip("/")
                    self.api("GET", "/api/status")
                    return
                except (OSError, ValueError, KeyError):
                    pass  # the file is half written or the server is not listening yet
            time.sleep(0.2)

    def api(self, method: str, path: str, timeout: float = 10):
        """Call the server's REST API with the token; return the decoded JSON (None when empty)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """Shut down every kernel session, so that the next notebook has the CPU to itself."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}", timeout=30)

    def stop(self) -> None:
        """Stop the server and its kernels, politely first; kill what is left (each kernel has its own group)."""
        if self.process is None:
            return
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        with contextlib.suppress(Exception):
            self.api("POST", "/api/shutdown", timeout=10)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            _kill_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                _kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:  # a kernel leads its own process group: take its helpers with it
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(child.pid) == child.pid:
                    os.killpg(child.pid, signal.SIGKILL)
                else:
                    child.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab, stopped with its kernels whatever happens."""
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


class NotebookPage:
    """One notebook open in its own JupyterLab workspace in a Chromium page, with its console log kept."""

    def __init__(self, browser, lab: Lab, name: str):
        self.lab = lab
        self.name = name
        self.stem = Path(name).stem
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.console = []
        self.page.on("console", lambda message: self.console.append(f"[{message.type}] {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"[pageerror] {error}"))
        self.page.set_default_timeout(ACTION_S * 1000)

    # --- artifacts ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def artifacts_on_failure(self):
        """On any failure, save the page's screenshot, the console log and JupyterLab's log to tests/artifacts/."""
        try:
            yield
        except BaseException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                self.page.screenshot(path=ARTIFACTS / f"{self.stem}-failure.png", timeout=10_000)
            self.save_console_log()
            with contextlib.suppress(OSError):
                shutil.copy(self.lab.log_path, ARTIFACTS / f"{self.stem}-jupyterlab.log")
            raise

    def save_console_log(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{self.stem}-console.log").write_text("\n".join(self.console) + "\n")

    def screenshot(self, what: str) -> None:
        """Save what the 1280x800 window shows as tests/artifacts/<notebook>-<what>.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{self.stem}-{what}.png")

    def screenshot_whole(self, what: str, locator) -> None:
        """Save all of an element, however tall: the window grows taller for the shot (same width, same layout)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = locator.evaluate("el => el.getBoundingClientRect().height")
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 300)})
        try:
            locator.screenshot(path=ARTIFACTS / f"{self.stem}-{what}.png")
        finally:
            self.page.set_viewport_size(VIEWPORT)

    # --- the notebook -----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the notebook in a fresh workspace and wait until its kernel is idle."""
        self.page.goto(f"{self.lab.url}/lab/workspaces/{self.stem}/tree/{self.name}?reset&token={self.lab.token}",
                       timeout=OPEN_S * 1000)
        # The execution indicator says idle before any kernel exists; the status bar names the kernel.
        self.wait_for(f"""() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length > 0 && {KERNEL_IDLE}""",
                      OPEN_S, "the notebook to open with an idle kernel")

    def run_all(self) -> None:
        """Run all cells from the Run menu; wait until every code cell has an execution count and the kernel is idle."""
        # A Run All sent while the session is still settling can be dropped without a word: send it again.
        for attempt in range(1, RUN_ALL_TRIES + 1):
            self.click_menu("Run", "Run All Cells")
            try:
                self.wait_for(f"() => {PROMPTS}.some(p => /^\\[(\\*|\\d+)\\]:$/.test(p.textContent.trim()))",
                              START_S, "Run All to start", on_dialog=self._run_all_again)
                break
            except WaitTimeout:
                if attempt == RUN_ALL_TRIES:
                    raise
                self.console.append("[test] Run All did not start; sending it again")
        self.wait_for(f"() => {PROMPTS}.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim())) && {KERNEL_IDLE}",
                      RUN_ALL_S, "every cell to run", on_dialog=self._run_all_again)

    def _run_all_again(self) -> None:
        # A Select Kernel dialog stops the Run All that opened it: once the kernel is idle and no dialog is left,
        # run all again.
        self.wait_for(f"() => !document.querySelector('.jp-Dialog') && {KERNEL_IDLE}", OPEN_S,
                      "the kernel after a dialog")
        self.click_menu("Run", "Run All Cells")

    def click_menu(self, menu: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(menu)}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).click()

    def wait_for(self, predicate: str, timeout_s: float, what: str, on_dialog=None) -> None:
        """Wait until the JavaScript predicate holds; meanwhile accept harmless dialogs and fail on error outputs."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        deadline = time.monotonic() + timeout_s
        while True:
            if self._accept_dialogs() and on_dialog:
                on_dialog()
            errors = self.cell_errors()
            assert not errors, f"a cell failed while waiting for {what}:\n" + "\n---\n".join(errors)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"timed out after {timeout_s} s waiting for {what}")
            try:
                self.page.wait_for_function(predicate, timeout=min(left, POLL_S) * 1000, polling=100)
                return
            except PlaywrightTimeout:
                continue

    def _accept_dialogs(self) -> int:
        """Accept the harmless dialogs open now (fail on any other); return how many there were."""
        dialogs = self.page.locator(".jp-Dialog").all()
        for dialog in dialogs:
            text = dialog.inner_text(timeout=5_000)
            assert any(title in text for title in HARMLESS_DIALOGS), f"JupyterLab opened a dialog:\n{text}"
            self.console.append(f"[test] accepted a dialog: {' '.join(text.split())}")
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        return len(dialogs)

    def cell_errors(self) -> list[str]:
        """Return the text of every error output (tracebacks on stderr included) in the notebook."""
        return self.page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
            .map(e => e.textContent).filter(t => t.includes('Traceback'))""", STDERR_OUTPUT)

    def widget_trouble(self) -> list[str]:
        """Return outputs that show a widget that failed or never finished rendering."""
        return self.page.evaluate(f"(needles) => {OUTPUTS_WITH_NEEDLES}", list(WIDGET_TROUBLE))

    def close(self) -> None:
        self.save_console_log()
        with contextlib.suppress(Exception):
            self.context.close()
        with contextlib.suppress(Exception):
            self.lab.shut_down_kernels()


@pytest.fixture
def notebook(browser, lab, request):
    """Open a NotebookPage for the notebook named by the test's parameter; close it and its kernel afterwards."""
    name = request.param
    if not (NOTEBOOKS / name).exists():
        pytest.fail(f"notebooks/{name} is missing")
    page = NotebookPage(browser, lab, name)
    try:
        yield page
    finally:
        page.close()


class Panel:
    """The TrainPanel as a page shows it, driven through its controls."""

    def __init__(self, nb: NotebookPage, locator):
        self.nb = nb
        self.page = nb.page
        self.root = locator
        self.status = locator.locator(".mp3kit-status")
        self.plot = locator.locator(".mp3kit-plot")
        self.table = locator.locator(".mp3kit-runs")

    def control(self, description: str):
        """Return the control whose description label reads exactly description."""
        label = self.page.locator(".widget-label").filter(has_text=re.compile(rf"^{re.escape(description)}$"))
        return self.root.locator(".widget-inline-hbox").filter(has=label)

    def button(self, text: str):
        # By its text: the accessible name also holds the icon font's glyph.
        return self.root.locator("button", has_text=re.compile(rf"^\s*{re.escape(text)}\s*$"))

    def type_into_readout(self, description: str, text: str) -> None:
        """Type a value into a slider's readout box, as a student does, and wait until the slider shows it."""
        readout = self.control(description).locator(".widget-readout")
        readout.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(text)
        self.page.keyboard.press("Enter")
        # The readout shows the value in its own format (0.02 reads "0.020").
        self.page.wait_for_function("([el, value]) => parseFloat(el.textContent) === value",
                                    arg=[readout.element_handle(), float(text)], timeout=ACTION_S * 1000)

    def runs_dir(self) -> Path:
        """Return the runs folder the panel's title names (relative to the notebook's folder when relative)."""
        shown = Path(self.root.locator(".widget-html-content code").first.inner_text())
        return shown if shown.is_absolute() else self.nb.lab.root / shown

    def train_until(self, pattern: str, button: str = "Train", timeout_s: float = TRAIN_S) -> str:
        """Click button and wait until the status matches pattern (or reports an error); return the status."""
        _expect(self.button(button)).to_be_enabled()
        self.button(button).click()
        return self.wait_status(pattern, timeout_s)

    def wait_status(self, pattern: str, timeout_s: float = TRAIN_S) -> str:
        """Wait until the status text matches pattern (a regular expression JavaScript reads alike); return it."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        # Polled in the page every 100 ms: a short state such as "training epoch 2/12" is not missed.
        try:
            self.page.wait_for_function("([el, source]) => new RegExp(source).test(el.textContent.trim())",
                                        arg=[self.status.element_handle(), f"{pattern}|^error:"], polling=100,
                                        timeout=timeout_s * 1000)
        except PlaywrightTimeout:
            raise WaitTimeout(f"timed out after {timeout_s} s waiting for the panel's status to match {pattern!r}; "
                              f"it reads {self.status.inner_text().strip()!r}") from None
        text = self.status.inner_text().strip()
        assert not text.startswith("error:"), f"the panel reports: {text}"
        return text

    def row(self, run_name: str) -> dict:
        """Return the runs table's row for run_name as {column: text}."""
        row = self.table.locator("tbody tr").filter(has=self.page.locator("td").filter(
            has_text=re.compile(rf"^{re.escape(run_name)}$")))
        _expect(row).to_have_count(1, timeout=ACTION_S * 1000)
        head = [h.strip() for h in self.table.locator("thead th").all_inner_texts()]
        return dict(zip(head, (c.strip() for c in row.locator("td").all_inner_texts())))

    def watch_plot(self) -> None:
        """Start recording every image the plot area shows, with the status shown beside it at that moment.

        A MutationObserver misses no update between polls."""
        self.plot.evaluate("""(el, status) => {
            window.__mp3kitPlots = [];
            const note = () => {
                const img = el.querySelector('img');
                if (img && img.src !== window.__mp3kitPlots.at(-1)?.src)
                    window.__mp3kitPlots.push({src: img.src, status: status.textContent.trim()});
            };
            new MutationObserver(note).observe(el, {subtree: true, childList: true, attributes: true});
        }""", self.status.element_handle())

    def plots_seen(self) -> list[dict]:
        """Return the images the plot area showed since watch_plot, in order: {src, status}."""
        return self.page.evaluate("() => window.__mp3kitPlots || []")

    def layout_problems(self) -> list[str]:
        """Return what is cut off or overflows at the current window size: labels, controls, the plot image."""
        return self.root.evaluate("""(panel, slack) => {
            const problems = [];
            const box = panel.getBoundingClientRect();
            if (box.right > document.documentElement.clientWidth)
                problems.push(`the panel ends at ${Math.round(box.right)} px, past the window's right edge`);
            for (const label of panel.querySelectorAll('.widget-label')) {
                if (label.offsetParent && label.scrollWidth > label.clientWidth + 1)
                    problems.push(`label "${label.textContent}" is cut off`);
            }
            for (const el of panel.querySelectorAll('.widget-inline-hbox, button, img, table')) {
                const r = el.getBoundingClientRect();
                if (r.width && (r.left < box.left - slack || r.right > box.right + slack))
                    problems.push(`${el.tagName.toLowerCase()} "${(el.textContent || '').trim().slice(0, 40)}"`
                                  + ` sticks out of the panel (${Math.round(r.left)}..${Math.round(r.right)} px,`
                                  + ` panel ${Math.round(box.left)}..${Math.round(box.right)} px)`);
            }
            return problems;
        }""", LAYOUT_SLACK_PX)


def find_panel(nb: NotebookPage) -> Panel:
    """Return the notebook's rendered training panel, checking every control is there and no widget failed."""
    panels = nb.page.locator(".jp-NotebookPanel .mp3kit-panel")
    _expect(panels).to_have_count(1, timeout=ACTION_S * 1000)
    panel = Panel(nb, panels.first)
    panel.root.scroll_into_view_if_needed()
    for description in PANEL_CONTROLS:
        _expect(panel.control(description)).to_be_visible()
    for text in ("Train", "Stop", "Resume"):
        _expect(panel.button(text)).to_be_visible()
    _expect(panel.status).to_have_text(re.compile(r"^idle"))
    # "Loading widget..." may show for a moment while a view renders; it must go.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        nb.page.wait_for_function(f"(needles) => !({OUTPUTS_WITH_NEEDLES}).length", arg=list(WIDGET_TROUBLE),
                                  polling=100, timeout=ACTION_S * 1000)
    assert not nb.widget_trouble(), "widget outputs failed to render:\n" + "\n".join(nb.widget_trouble())
    return panel


def assert_fits(panel: Panel) -> None:
    problems = panel.layout_problems()
    assert not problems, "the panel does not fit a 1280x800 window:\n" + "\n".join(problems)


def open_and_run_all(nb: NotebookPage) -> Panel:
    """Open the notebook, run all cells, check none failed, and return its training panel."""
    nb.open()
    nb.run_all()
    assert not nb.cell_errors(), "cells failed:\n" + "\n---\n".join(nb.cell_errors())
    return find_panel(nb)


@pytest.mark.parametrize("notebook", ["01_introduction.ipynb"], indirect=True)
def test_introduction_notebook_and_its_panel_in_jupyterlab(notebook):
    """Run notebook 1, then train, stop and resume runs from its panel as a student would."""
    nb = notebook
    with nb.artifacts_on_failure():
        panel = open_and_run_all(nb)
        nb.screenshot("page-before")
        nb.screenshot_whole("panel-before", panel.root)
        assert_fits(panel)
        runs_dir = panel.runs_dir()
        code_cells = nb.page.locator(".jp-NotebookPanel .jp-CodeCell").count()

        # A short run with settings typed into the sliders' boxes: live curves, then the run in the table.
        panel.type_into_readout("Learning rate", "0.02")
        panel.type_into_readout("Epochs", "3")
        panel.watch_plot()
        status = panel.train_until(r"^done: test mAP \d\.\d{3}")
        name = re.search(r"· (\S+),", status).group(1)
        _expect(panel.plot.locator("img")).to_be_visible()
        # Live means while it trains: at least two different curves before the status says the run is done.
        during = {seen["src"] for seen in panel.plots_seen() if not seen["status"].startswith("done:")}
        assert len(during) >= 2, f"the loss/mAP plot showed {len(during)} image(s) while the run trained, not 2 or more"
        row = panel.row(name)
        assert (row["lr"], row["epochs"], row["status"]) == ("0.02", "3/3", "complete"), row
        assert re.fullmatch(r"\d\.\d{3}", row["test mAP"]), row
        config = json.loads((runs_dir / name / "config.json").read_text())
        assert (config["lr"], config["epochs"]) == (0.02, 3), "the panel trained other settings than it showed"

        # A longer run, stopped after its first epoch: recorded as stopped, with a checkpoint Resume continues.
        panel.type_into_readout("Epochs", "12")
        panel.train_until(r"^training epoch \d+/12")
        panel.button("Stop").click()
        status = panel.wait_status(r"^stopped at epoch \d+")
        name = re.search(r"continue (\S+)\.$", status).group(1)
        stopped_at = int(re.search(r"stopped at epoch (\d+)", status).group(1))
        assert 1 <= stopped_at < 12, status
        assert panel.row(name)["status"] == "stopped"
        assert json.loads((runs_dir / name / "status.json").read_text())["status"] == "stopped"
        assert (runs_dir / name / "checkpoint.pt").stat().st_size > 0
        _expect(panel.button("Stop")).to_be_disabled()
        _expect(panel.button("Train")).to_be_enabled()
        nb.screenshot_whole("panel-stopped", panel.root)
        panel.train_until(r"^done: test mAP", button="Resume")
        row = panel.row(name)
        assert (row["status"], row["epochs"]) == ("complete", "12/12"), row

        nb.screenshot_whole("panel-after", panel.root)
        panel.plot.scroll_into_view_if_needed()
        nb.screenshot("page-after")
        assert_fits(panel)
        assert not nb.cell_errors() and not nb.widget_trouble()
        # Keys typed into the panel must reach the panel, not JupyterLab's command-mode shortcuts (1-6, Enter, ...).
        assert nb.page.locator(".jp-NotebookPanel .jp-CodeCell").count() == code_cells


@pytest.mark.parametrize("notebook", ["03_develop_classifier.ipynb"], indirect=True)
def test_develop_classifier_notebook_and_its_panel_in_jupyterlab(notebook):
    """Run notebook 3, then train one run from its panel."""
    nb = notebook
    with nb.artifacts_on_failure():
        panel = open_and_run_all(nb)
        nb.screenshot_whole("panel-before", panel.root)
        assert_fits(panel)
        status = panel.train_until(r"^done: test mAP \d\.\d{3}")
        name = re.search(r"· (\S+),", status).group(1)
        _expect(panel.plot.locator("img")).to_be_visible()
        row = panel.row(name)
        assert row["status"] == "complete" and re.fullmatch(r"\d\.\d{3}", row["test mAP"]), row
        nb.screenshot_whole("panel-after", panel.root)
        panel.plot.scroll_into_view_if_needed()
        nb.screenshot("page-after")
        assert not nb.cell_errors() and not nb.widget_trouble()


def _expect(locator):
    from playwright.sync_api import expect

    return expect(locator)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pid: int, sig) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _copy_without_outputs(source: Path, target: Path) -> None:
    # Stored execution counts would make "every cell has run" true before Run All has started.
    import nbformat

    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, target)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))

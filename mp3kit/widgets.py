"""The live training panel: controls that fill a TrainConfig, Train/Stop/Resume, live curves and a runs table.

The controls are the TrainConfig fields whose metadata gives them one (mp3kit.config.Control), in field order, in
two columns; a field added with a Control appears here with no edit to this module.

Only core ipywidgets that behave alike under 7.7 (Colab) and 8 (JupyterLab) are used. Training runs in a
background thread so that the kernel's main thread stays free for Stop clicks, and draws with a bare matplotlib
Figure, because pyplot's global state is shared with the notebook.

Every widget change goes out from the kernel's main thread: Colab holds back widget messages sent from other
threads until some other message flushes them (googlecolab/colabtools#3373), so curves set from the training
thread would sit still there. The training thread only records the changes it wants; a callback it schedules on
the kernel's main event loop (`kernel.io_loop`, a tornado loop in ipykernel 6 and 7 alike) applies them, and
`TrainPanel.wait()` applies them too when a cell blocks the main thread. Outside a kernel there is no front end
to send to, and changes apply at once in whichever thread makes them.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
import threading
import time
from pathlib import Path

import ipywidgets as widgets

from mp3kit import estimate, models, runs, train
from mp3kit.config import Setting, TrainConfig, settings_of
from mp3kit.plots import SYNTHETIC_MARK, history_png
from mp3kit.table import MISSING, Table
from mp3kit.util import UserError

DESCRIPTION_WIDTH = "110px"
CONTROL_WIDTH = "380px"
PLOT_SIZE = (9.0, 2.6)  # inches at 100 dpi: the live loss and mAP figure under the controls
COLOURS = {"idle": "#555", "busy": "#1f5fa8", "done": "#2a7a2a", "stopped": "#b36b00", "error": "#c62828"}
PLOT_HINT = "The loss and mAP curves of a run appear here after its first epoch."
WAIT_PUMP_S = 0.1  # while wait() blocks the main thread, it applies the training thread's changes this often

log = logging.getLogger(__name__)


class TrainPanel:
    """A notebook panel that trains runs from its controls, live, and lists the runs made so far."""

    def __init__(self, experiment=None, *, data_root=None, runs_dir="runs", base_config=None, models=None):
        # experiment (an mp3kit.experiment.Experiment) gives the base config, the data and the runs folder;
        # without one, data_root, runs_dir and base_config do. models adds Model choices: {label: name or spec}.
        self.experiment = experiment
        self.data_root = data_root
        self.runs_dir = Path(experiment.runs_dir if experiment is not None else runs_dir)
        if base_config is None:
            base_config = experiment.config() if experiment is not None else TrainConfig()
        self.base_config = base_config
        self.last_run = None
        self.error = None  # the exception of the last failed start, for debugging
        self.estimate = None  # mp3kit.estimate.Estimate of the run being trained, measured when it starts
        self._started = 0.0
        self.status_text = ""
        self._thread = None
        self._stop = threading.Event()
        self._data = None  # (max_images, train.Data) loaded once for panels without an experiment
        self._loop = _kernel_main_loop()
        self._view_lock = threading.RLock()
        self._pending = {}  # (id(widget), trait) -> (widget, trait, value): the latest changes not yet applied
        self._flush_scheduled = False
        self._build(models or {})
        self._set_status("idle: choose settings and click Train", "idle")
        self._refresh_table()

    # --- public API ---------------------------------------------------------------------------

    def config(self) -> TrainConfig:
        """Return the TrainConfig the controls describe (the base config with the panel's fields changed)."""
        return self.base_config.replace(**{name: _read(s, self.controls[name]) for name, s in self._shown.items()})

    def train(self, wait: bool = False):
        """Start a new run from the controls in the background (what Train does); return its thread (None: bad setting)."""
        if self.training:
            return self._thread
        try:
            config = self.config()
        except UserError as exc:
            self.error = exc
            self._set_status(f"error: {exc}", "error")
            return None
        return self._start(config, self._next_name(config), resume=False, wait=wait)

    def resume(self, wait: bool = False):
        """Continue the last run where it stopped, with its own settings (what Resume does); return the thread."""
        run = self.last_run
        if self.training:
            return self._thread
        if run is None or run.status != "stopped":
            return None
        return self._start(TrainConfig.from_dict(run.config), run.name, resume=True, wait=wait)

    def stop(self) -> None:
        """Ask the running run to stop after its current batch (what Stop does)."""
        if self.training:
            self._stop.set()
            self._set_status("stopping after the current batch ...", "busy")

    def wait(self, timeout=None) -> bool:
        """Wait for the running run to end, showing its progress meanwhile; return True when nothing runs any more."""
        thread = self._thread
        end = None if timeout is None else time.monotonic() + timeout
        while thread is not None and thread.is_alive():
            left = WAIT_PUMP_S if end is None else min(WAIT_PUMP_S, end - time.monotonic())
            if left <= 0:
                break
            thread.join(left)
            self._flush_if_allowed()  # the main thread is blocked in this call: the event loop cannot apply them
        self._flush_if_allowed()
        return not self.training

    @property
    def training(self) -> bool:
        """True while a run is training in the background."""
        return self._thread is not None and self._thread.is_alive()

    def display(self) -> None:
        """Show the panel in the notebook."""
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self):
        self.display()

    # --- layout -------------------------------------------------------------------------------

    def _build(self, extra_models: dict) -> None:
        base = self.base_config
        # The fields whose metadata gives them a control (config.Control), in field order: the panel stays small.
        self._shown = {s.name: s for s in settings_of(type(base)) if s.panel is not None}
        self.controls = {name: _control(s, base, extra_models) for name, s in self._shown.items()}
        self.train_button = _button("Train", "success", "play")
        self.stop_button = _button("Stop", "", "stop")  # red while a run trains (_set_busy)
        self.resume_button = _button("Resume", "", "forward")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.disabled = self.resume_button.disabled = True

        buttons = widgets.HBox([self.train_button, self.stop_button, self.resume_button],
                               layout=widgets.Layout(margin="4px 0 0 0"))
        shown = list(self.controls.values())
        half = (len(shown) + 1) // 2  # two columns, the buttons under the second
        left, right = widgets.VBox(shown[:half]), widgets.VBox([*shown[half:], buttons])
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.status.add_class("mp3kit-status")
        self.plot = widgets.Output(layout=widgets.Layout(width="100%", min_height="40px"))
        self.plot.add_class("mp3kit-plot")
        self.plot.outputs = (_text_output(PLOT_HINT),)
        self.runs_table = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.runs_table.add_class("mp3kit-runs")
        where = html.escape(str(self.runs_dir))
        # One line whatever the folder's length: a long path is cut with an ellipsis and shown whole on hover.
        title = widgets.HTML(f'<div title="{where}" style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
                             f"<b>Training panel</b> &middot; nothing trains until you click Train &middot; runs are "
                             f"recorded in <code>{where}</code></div>", layout=widgets.Layout(width="100%"))
        self.widget = widgets.VBox([title, widgets.HBox([left, right]), self.status, self.plot, self.runs_table],
                                   layout=widgets.Layout(width="100%"))
        self.widget.add_class("mp3kit-panel")

    # --- training thread ----------------------------------------------------------------------

    def _start(self, config: TrainConfig, name: str, *, resume: bool, wait: bool):
        self.error = None
        self._stop = threading.Event()
        verb = "resuming" if resume else "preparing data and model for"
        self._set_status(f"{verb} {name} ...", "busy")
        self._show(self.plot, outputs=(_text_output(f"Curves of {name} appear here after its next epoch."),))
        self._thread = threading.Thread(target=self._work, args=(config, name, resume, self._stop),
                                        name=f"mp3kit-panel-{name}", daemon=True)
        self._set_busy(True)
        self._thread.start()
        if wait:
            self._thread.join()
        return self._thread

    def _work(self, config: TrainConfig, name: str, resume: bool, stop: threading.Event) -> None:
        try:
            data = self._load_data(config)
            self.estimate = estimate.estimate_run(config, data, path=self.runs_dir / name, resume=resume, reuse=False)
            if self.estimate.timing is not None:
                self._set_status(f"{'resuming' if resume else 'starting'} {name}: about "
                                 f"{estimate.duration(self.estimate.seconds)} on {self.estimate.timing.device} ...", "busy")
            self._started = time.monotonic()
            run = train.fit(config, self.data_root, name=name, runs_dir=self.runs_dir, resume=resume, progress=False,
                            callback=self._on_epoch, stop=stop, data=data,
                            expected=self.estimate.timing and self.estimate.record())
            self.last_run = run
            self._show_end(run)
        except UserError as exc:
            self.error = exc
            self._set_status(f"error: {exc}", "error")
        except Exception as exc:  # a bug, not a setting: one line here, the traceback in the log
            self.error = exc
            log.exception("training %s failed", name)
            first_line = (str(exc).splitlines() or [""])[0]
            self._set_status(f"error: {type(exc).__name__}: {first_line}", "error")
        finally:
            self._set_busy(False)
            self._refresh_table()

    def _load_data(self, config: TrainConfig):
        if self.experiment is not None:
            return self.experiment.data
        if self._data is None or self._data[0] != config.max_images:
            self._data = (config.max_images, train.load_data(self.data_root, config.max_images))
        return self._data[1]

    def _on_epoch(self, run) -> None:
        self.last_run = run
        if run.history:
            self._show(self.plot, outputs=(_png_output(_panel_png(run)),))
        if run.status == "running" and not self._stop.is_set():
            done, total = len(run.history), run.config["epochs"]
            last = run.history[-1]
            val = f", val mAP {last['val_map']:.3f}" if last.get("val_map") is not None else ""
            now = f"training epoch {done + 1}/{total}" if done < total else f"testing {run.name} on the test split"
            left = self._time_left(done, total)
            self._set_status(f"{now} ... (epoch {done}: train loss {last['train_loss']:.3f}{val}){left}", "busy")
            self._refresh_table()

    def _time_left(self, done: int, total: int) -> str:
        """Return ", about N left" from this run's pace so far (its epochs trained here), or "" before the first."""
        trained = done - (total - self.estimate.epochs)
        if trained <= 0 or done >= total:
            return ""
        pace = (time.monotonic() - self._started) / trained
        return f", about {estimate.duration(pace * (total - done))} left"

    def _show_end(self, run) -> None:
        if run.status == "stopped":
            self._set_status(f"stopped at epoch {len(run.history)} (resume available): click Resume to continue {run.name}.",
                             "stopped")
        else:
            seconds = run.metrics.get("seconds") or 0.0
            note = f" {SYNTHETIC_MARK}" if _synthetic(run) else ""
            self._set_status(f"done: test mAP {run.test_map:.3f} · {run.name}, {len(run.history)} epochs, "
                             f"{seconds:.0f} s{note}", "done")

    # --- state shown ---------------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        for control in self.controls.values():
            self._show(control, disabled=busy)
        # Colour only on the button that can be clicked now: a pale red Stop reads as "press me" even when disabled.
        self._show(self.train_button, disabled=busy, button_style="" if busy else "success")
        self._show(self.stop_button, disabled=not busy, button_style="danger" if busy else "")
        self._show(self.resume_button,
                   disabled=busy or self.last_run is None or self.last_run.status != "stopped")

    def _set_status(self, text: str, kind: str) -> None:
        self.status_text = text
        self._show(self.status, value=f'<span style="color:{COLOURS[kind]}">{html.escape(text)}</span>')

    def _refresh_table(self) -> None:
        try:
            recorded = runs.list_runs(self.runs_dir)
        except UserError as exc:
            self._show(self.runs_table, value=f'<span style="color:{COLOURS["error"]}">{html.escape(str(exc))}</span>')
            return
        self._show(self.runs_table, value=runs_table_html(recorded[::-1], self.runs_dir,
                                                          current=self.last_run.name if self.last_run else None))

    # --- sending widget changes from the main thread only ----------------------------------------

    def _show(self, widget, **traits) -> None:
        """Set widget's traits now on the main thread (or outside a kernel), else from the main event loop soon."""
        with self._view_lock:
            for name, value in traits.items():
                key = (id(widget), name)
                self._pending.pop(key, None)  # re-inserted last, so changes apply in the order they were made
                self._pending[key] = (widget, name, value)
            if self._may_send_here():
                self._flush()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.add_callback(self._flush)  # thread-safe: tornado hands it to the loop's own thread

    def _may_send_here(self) -> bool:
        return self._loop is None or threading.current_thread() is threading.main_thread()

    def _flush_if_allowed(self) -> None:
        if self._may_send_here():
            self._flush()

    def _flush(self) -> None:
        # Under the lock: outside a kernel two threads may flush, and an older value must not land after a newer one.
        with self._view_lock:
            pending, self._pending, self._flush_scheduled = self._pending, {}, False
            for widget, name, value in pending.values():
                setattr(widget, name, value)

    def _next_name(self, config: TrainConfig) -> str:
        taken = [int(m.group(1)) for p in (self.runs_dir.iterdir() if self.runs_dir.is_dir() else [])
                 if (m := re.match(r"panel-(\d+)-", p.name))]
        label = re.sub(r"[^A-Za-z0-9_.-]+|\.{2,}", "-", config.model_label()).strip("-") or "model"
        return f"panel-{max(taken, default=0) + 1}-{label}"


_COLUMNS = [("run", "left"), ("model", "left"), ("optimizer", "left"), ("lr", "right"), ("epochs", "right"),
            ("status", "left"), ("val mAP", "right"), ("test mAP", "right")]


def _control(s: Setting, base: TrainConfig, extra_models: dict):
    """Return the widget that shows setting s of the base config, as its field's Control says."""
    c, value = s.panel, getattr(base, s.name)
    # The description column is wide enough that no label is cut.
    common = dict(description=c.label, style={"description_width": DESCRIPTION_WIDTH}, layout=_control_layout())
    if c.kind == "model":
        # The registry's names whose network takes the base config's images, the extra ones, and the base's own.
        options = [(name, name) for name, entry in models.MODELS.items()
                   if entry.offered and models.takes(name, base.image_size, base.width)]
        options += [(str(label), spec) for label, spec in extra_models.items()]
        if all(v != value for _, v in options):
            options.append((models.label(value), value))
        return widgets.Dropdown(options=options, value=value, **common)
    if c.kind == "dropdown":
        return widgets.Dropdown(options=list(s.choices), value=value, **common)
    if c.kind == "log-slider":
        low, high = math.log10(c.low), math.log10(c.high)
        return widgets.FloatLogSlider(value=min(max(value, c.low), c.high), base=10, min=low, max=high, step=0.1,
                                      readout_format=".2g", continuous_update=False, **common)
    whole = s.kind is int
    high = max(c.high, value)
    if c.kind == "slider":
        step = {} if c.step is None else {"step": c.step}
        slider = widgets.IntSlider if whole else widgets.FloatSlider
        return slider(value=value, min=c.low, max=high, continuous_update=False, **step, **common)
    number = widgets.BoundedIntText if whole else widgets.BoundedFloatText
    return number(value=value, min=c.low, max=high, **common)


def _read(s: Setting, control):
    """Return the value a control gives its field (a float to 3 significant digits: sliders land on 0.0050118...)."""
    if s.kind is int:
        return int(control.value)
    if s.kind is float:
        return float(f"{control.value:.3g}")
    return control.value


def runs_table_html(recorded, runs_dir, current=None) -> str:
    """Return an HTML table of runs (name, model, optimizer, lr, epochs, status, val and test mAP), current in bold."""
    if not recorded:
        return f"<i>No runs in <code>{html.escape(str(runs_dir))}</code> yet: click Train to make one.</i>"
    rows = []
    for run in recorded:
        c = run.config
        val_map, test_map = (f"{v:.3f}" if v is not None else MISSING for v in (run.val_map, run.test_map))
        rows.append([run.name, models.label(c.get("model")), str(c.get("optimizer", "")), f"{c.get('lr', float('nan')):.3g}",
                     f"{len(run.history)}/{c.get('epochs', '?')}", run.status, val_map, test_map])
    table = Table(rows, [h for h, _ in _COLUMNS], align=[a for _, a in _COLUMNS])
    caption = f"Runs in <code>{html.escape(str(runs_dir))}</code>, newest first"
    bold = [i for i, run in enumerate(recorded) if run.name == current]
    return f'<div style="max-height:160px;overflow-y:auto">{table.to_html(caption, bold_rows=bold)}</div>'


def _panel_png(run) -> bytes:
    """Return the panel's live loss and mAP figure of run, titled with its progress."""
    title = f"{run.name}: epoch {len(run.history)}/{run.config.get('epochs', '?')}, {run.status}"
    return history_png(run, title=title, size=PLOT_SIZE)


def _kernel_main_loop():
    """Return the event loop of the kernel's main thread (ipykernel 6 and 7: kernel.io_loop), None outside a kernel."""
    from IPython import get_ipython

    return getattr(getattr(get_ipython(), "kernel", None), "io_loop", None)


def _control_layout():
    # A Layout is a widget of its own: sharing one between controls would tie their sizes together.
    return widgets.Layout(width=CONTROL_WIDTH)


def _button(text: str, look: str, icon: str):
    return widgets.Button(description=text, button_style=look, icon=icon, layout=widgets.Layout(width="110px"))


def _synthetic(run) -> bool:
    return bool(run.metrics.get("synthetic", run.config.get("data", {}).get("synthetic", False)))


def _text_output(text: str) -> dict:
    return {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}


def _png_output(png: bytes) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<loss and mAP curves>"}}

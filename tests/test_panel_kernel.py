"""The training panel inside a real kernel: every widget message it sends leaves from the kernel's main thread.

Colab holds back widget messages sent from other threads until another message flushes them
(googlecolab/colabtools#3373), so a panel that updates itself from its training thread sits still there. Each test
starts a kernel through jupyter_client (no browser), wraps the kernel's session.send inside it to note the thread
of every comm message, clicks the panel's buttons with the comm messages a front end sends, and reads the panel's
updates from IOPub while the kernel is idle, as a page would. It runs under this venv's ipykernel 7 with
ipywidgets 8, and under Colab's ipykernel 6.17.1 with ipywidgets 7.7.1 in the cached second virtualenv of
tests/widgets_compat_check.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import sys
import time
from pathlib import Path

import pytest

from mp3kit import synth

ROOT = Path(__file__).resolve().parents[1]
COMPAT_SCRIPT = ROOT / "tests" / "widgets_compat_check.py"
pytestmark = pytest.mark.slow  # starts kernels, one of them in a second virtualenv

START_S = 120  # a kernel that imports torch on a busy 2-core machine
RUN_S = 180
STOP_EPOCHS = 40  # far more than run before Stop is clicked: a Stop that is not honoured shows

# Runs in the kernel before the panel is made: note the thread of every comm message the kernel sends.
RECORD_COMM_THREADS = """
import threading
from IPython import get_ipython

_kernel = get_ipython().kernel
_comm_threads = []
_plain_send = _kernel.session.send

def _noting_send(stream, msg_or_type, *args, **kwargs):
    kind = msg_or_type if isinstance(msg_or_type, str) else msg_or_type["header"]["msg_type"]
    if kind.startswith("comm_"):
        _comm_threads.append(threading.current_thread().name)
    return _plain_send(stream, msg_or_type, *args, **kwargs)

_kernel.session.send = _noting_send
"""

MAKE_PANEL = """
import json
from IPython.display import display
from mp3kit.train import TrainConfig
from mp3kit.widgets import TrainPanel

panel = TrainPanel(data_root={data_root!r}, runs_dir={runs_dir!r},
                   base_config=TrainConfig(image_size=32, max_images=20, epochs=3, eval_every=1, batch_size=10))
display(panel)
print(json.dumps({{"status": panel.status.model_id, "plot": panel.plot.model_id, "epochs": panel.controls["epochs"].model_id,
                   "train": panel.train_button.model_id, "stop": panel.stop_button.model_id}}))
"""


def _load_compat_script():
    spec = importlib.util.spec_from_file_location("widgets_compat_check", COMPAT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Kernel:
    """A kernel started from python through jupyter_client, with every IOPub message it sent kept in order."""

    def __init__(self, python: str, workdir: Path):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        spec = workdir / "kernels" / "panel-test"
        spec.mkdir(parents=True)
        argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "panel test", "language": "python"}))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("MP3KIT_QUIET", None)  # as in a student's notebook: a progress bar made in a thread would show here
        self.manager = KernelManager(kernel_name="panel-test",
                                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
        self.manager.start_kernel(env=env, cwd=str(workdir))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=START_S)
        self.iopub = []

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def _read(self, timeout: float):
        try:
            msg = self.client.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        self.iopub.append(msg)
        return msg

    def execute(self, code: str, timeout: float = START_S) -> str:
        """Run code as a cell; return what it printed (fail on an error)."""
        msg_id = self.client.execute(code)
        printed, errors = [], []
        end = time.monotonic() + timeout
        while True:
            msg = self._read(max(0.0, end - time.monotonic()))
            assert msg is not None, f"the cell did not finish within {timeout} s:\n{code}"
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (errors if content["name"] == "stderr" else printed).append(content["text"])
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.client.get_shell_msg(timeout=timeout)
        assert reply["content"]["status"] == "ok", "".join(errors)[-4000:]
        return "".join(printed)

    def send_to_widget(self, model_id: str, data: dict) -> None:
        """Send data to a widget's model as its view in a page does (a click, a changed value)."""
        msg = self.client.session.msg("comm_msg", {"comm_id": model_id, "data": data})
        self.client.shell_channel.send(msg)

    def wait_for_enabled(self, button_id: str, since: int, timeout: float = RUN_S) -> None:
        """Read IOPub until the button's last update (after message since) enables it, as a page would show it."""
        end = time.monotonic() + timeout
        while True:
            states = [s["disabled"] for m in self.iopub[since:] if "disabled" in (s := _state(m, button_id))]
            if states and states[-1] is False:
                return
            assert time.monotonic() < end, f"the button {button_id} was not enabled again within {timeout} s"
            self._read(0.5)

    def wait_for_status(self, status_id: str, pattern: str, timeout: float = RUN_S) -> str:
        """Read IOPub (no cell runs meanwhile) until the status widget shows text matching pattern; return the text."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = self._read(0.5)
            if msg is not None and (text := _status_text(msg, status_id)) is not None:
                assert not text.startswith("error:"), f"the panel reports: {text}"
                if re.search(pattern, text):
                    return text
        shown = [t for m in self.iopub if (t := _status_text(m, status_id)) is not None]
        raise AssertionError(f"no status matching {pattern!r} within {timeout} s; the panel showed {shown}")


def _state(msg, model_id: str) -> dict:
    """Return the state a comm update message gives model_id ({} for any other message)."""
    content = msg["content"]
    if msg["msg_type"] != "comm_msg" or content.get("comm_id") != model_id:
        return {}
    data = content.get("data", {})
    return data.get("state", {}) if data.get("method") == "update" else {}


def _status_text(msg, status_id: str) -> str | None:
    value = _state(msg, status_id).get("value")
    return re.sub(r"<[^>]+>", "", value) if value is not None else None


def _images_before(messages, plot_id: str, status_id: str, pattern: str) -> set:
    """Return the distinct plot images sent before the status first matched pattern."""
    images = set()
    for msg in messages:
        text = _status_text(msg, status_id)
        if text is not None and re.search(pattern, text):
            break
        for output in _state(msg, plot_id).get("outputs", ()):
            if "image/png" in output.get("data", {}):
                images.add(output["data"]["image/png"])
    return images


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return synth.make_synthetic_voc(tmp_path_factory.mktemp("voc"), n_images=60, seed=0)


def _colab_python() -> str:
    compat = _load_compat_script()
    try:
        return str(compat.colab_venv() / "bin" / "python")
    except compat.VenvUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("stack", ["this venv (ipykernel 7, ipywidgets 8)", "Colab (ipykernel 6.17.1, ipywidgets 7.7.1)"])
def test_panel_sends_every_widget_message_from_the_main_thread(stack, tmp_path, voc_root):
    python = sys.executable if stack.startswith("this venv") else _colab_python()
    kernel = Kernel(python, tmp_path)
    try:
        kernel.execute(RECORD_COMM_THREADS)
        ids = json.loads(kernel.execute(MAKE_PANEL.format(data_root=str(voc_root), runs_dir=str(tmp_path / "runs"))))
        versions = kernel.execute("import ipykernel, ipywidgets; print(ipykernel.__version__, ipywidgets.__version__)")
        expected = "6.17.1 7.7.1" if stack.startswith("Colab") else None
        assert expected is None or versions.split() == expected.split(), versions

        # Train, with the kernel idle from the click on: every update must reach IOPub while no cell runs.
        start = len(kernel.iopub)
        kernel.send_to_widget(ids["train"], {"method": "custom", "content": {"event": "click"}})
        kernel.wait_for_status(ids["status"], r"^done: test mAP \d\.\d{3}")
        during = _images_before(kernel.iopub[start:], ids["plot"], ids["status"], r"^done:")
        assert len(during) >= 2, f"{len(during)} distinct plot images reached the page before the run ended"

        # A long run, stopped from its Stop button while it trains. A page can click Train only once it is enabled again.
        kernel.wait_for_enabled(ids["train"], start)
        kernel.send_to_widget(ids["epochs"], {"method": "update", "state": {"value": STOP_EPOCHS}, "buffer_paths": []})
        kernel.send_to_widget(ids["train"], {"method": "custom", "content": {"event": "click"}})
        kernel.wait_for_status(ids["status"], rf"^training epoch 2/{STOP_EPOCHS}")
        kernel.send_to_widget(ids["stop"], {"method": "custom", "content": {"event": "click"}})
        status = kernel.wait_for_status(ids["status"], r"^stopped at epoch \d+")
        assert int(re.search(r"stopped at epoch (\d+)", status).group(1)) < STOP_EPOCHS, status

        threads = json.loads(kernel.execute("print(json.dumps(_comm_threads))"))
        assert len(threads) > 20, f"only {len(threads)} comm messages were sent: the panel did not update"
        others = {name: threads.count(name) for name in set(threads) if name != "MainThread"}
        assert not others, f"comm messages sent from threads other than the kernel's main thread: {others}"
        run = json.loads(kernel.execute("print(json.dumps([panel.last_run.status, len(panel.last_run.history)]))"))
        assert run[0] == "stopped" and run[1] < STOP_EPOCHS, run
    finally:
        kernel.close()

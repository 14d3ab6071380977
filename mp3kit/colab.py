"""Set up a Google Colab VM for a notebook in one call; anywhere else, do nothing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mp3kit import layout
from mp3kit.fetch import fetch_voc
from mp3kit.models import alexnet_cache_path
from mp3kit.util import UserError

DATA_ROOT = "/content/data/voc"  # the VM's own disk: ten thousand small files are slow on Drive
DRIVE = Path("/content/drive")
DRIVE_RUNS = DRIVE / "MyDrive" / "mp3kit"


def in_colab() -> bool:
    """Return True inside a Colab kernel (which imports google.colab when it starts)."""
    return "google.colab" in sys.modules


def _on_drive(path) -> bool:
    return Path(path).expanduser().absolute().is_relative_to(DRIVE)


def _mount_drive() -> None:
    from google.colab import drive

    try:
        drive.mount(str(DRIVE))
    except Exception as exc:  # Colab raises several types: access refused, timed out, ...
        raise UserError(f"Google Drive could not be mounted at {DRIVE} ({exc}): allow access when Colab asks, or set "
                        f"RUNS_ON_DRIVE = False in the first cell (runs then stay on the VM and go with it).") from exc


def _cache_alexnet_weights() -> None:
    """Download the ImageNet AlexNet weights into torch's hub cache, where mp3kit.models looks for them."""
    import torch
    from torchvision.models import AlexNet_Weights

    path = alexnet_cache_path()
    if path.is_file():
        return
    url = AlexNet_Weights.IMAGENET1K_V1.url
    path.parent.mkdir(parents=True, exist_ok=True)
    found = re.search(r"-([a-f0-9]+)\.", path.name)  # torchvision's file names carry a prefix of their SHA-256
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=found.group(1) if found else None, progress=True)
    except Exception as exc:  # network errors come in many types; the notebook copes without the weights
        print(f"The ImageNet AlexNet weights could not be downloaded from {url} ({exc}): the pretrained run will "
              f"say what is missing; run this cell again later.", file=sys.stderr)


def setup(profile: str = "quick", data_root=None, runs_dir=None, *, alexnet_weights: bool = False,
          runs_on_drive: bool = False, sources=()) -> tuple:
    """Prepare Colab for a notebook and return the (data_root, runs_dir) to use; elsewhere nothing happens.

    runs_dir None becomes the profile's runs folder (mp3kit.layout.runs_folder: runs/<profile>, where
    `mp3kit report` looks), in Colab and elsewhere. In Colab: turn on the custom widget manager (the training panel
    needs it); with runs_on_drive, mount Google Drive and keep runs_dir there (MyDrive/mp3kit/runs/<profile>) so
    runs survive a disconnect; with alexnet_weights, put the ImageNet AlexNet weights in torch's hub cache; for the
    "full" profile, fetch verified VOC 2007 to the VM's disk (sources, such as a Drive folder holding the archives,
    are tried first). A problem ends the cell with one sentence.
    """
    default_runs = runs_dir is None or not str(runs_dir).strip()
    runs_dir = str(layout.runs_folder(profile, runs_dir))
    if not in_colab():
        return data_root, runs_dir
    try:
        from google.colab import output

        output.enable_custom_widget_manager()
        wants_drive = runs_on_drive or any(_on_drive(s) for s in sources if "://" not in str(s))
        if wants_drive:
            _mount_drive()
        if runs_on_drive and not _on_drive(runs_dir):
            # The default keeps its layout there (runs/<profile>, the report beside runs/); a folder named by hand, its name.
            name = Path(runs_dir).name
            runs_dir = str(DRIVE_RUNS / "runs" / name if default_runs else DRIVE_RUNS / name)
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        if alexnet_weights:
            _cache_alexnet_weights()
        if profile == "full":
            data_root = data_root or DATA_ROOT
            if _on_drive(data_root):
                raise UserError(f"DATA_ROOT = {str(data_root)!r} is on Google Drive, where ten thousand small files "
                                f"are slow: leave DATA_ROOT = None (VOC goes to {DATA_ROOT}) and give a Drive "
                                f"folder holding the VOC archives as a source instead.")
            data_root = str(fetch_voc(data_root, sources=sources).parent)
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    except OSError as exc:  # Drive full or gone, a folder that cannot be made
        raise SystemExit(f"Colab set-up could not write {exc.filename or 'a file'} ({exc.strerror or exc}): free some "
                         f"space (on Drive too) and run this cell again.") from None
    print(f"Colab is set up: data {data_root or 'the embedded synthetic dataset'}, runs in {runs_dir}.")
    return data_root, runs_dir

"""Stand-ins for Colab's Python environment, made from the package list Colab publishes (tests/data/colab/).

    python tools/colab_env.py constraints [FREEZE]   # pins for a real install beside Colab's versions (make colab-check)
    python tools/colab_env.py stub PYTHON [FREEZE]   # mark every Colab package installed in PYTHON's environment

Colab's `pip-freeze.gpu.txt` names every package of its GPU runtime and its version. Two uses:

- `stub` writes, for each package, a dist-info folder holding only its name and version into the site-packages of a
  (fresh, throwaway) virtualenv. pip then sees Colab's packages as installed, exactly as it does in Colab, and a
  `pip install --dry-run --report` there resolves the notebooks' set-up cell for real against the package index
  without downloading Colab's 700 packages. The stubs declare no dependencies of their own, so the resolution
  checks what mp3kit and the packages it brings need, not whether Colab's own packages agree with each other.
- `constraints` prints pins for installing real packages at Colab's versions from PyPI: local version tags
  (torch 2.11.0+cu128) are dropped, and the CUDA wheels that PyPI's torch builds against another CUDA
  (nvidia-*, cuda-*) and packages Colab installed from a URL are left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

FREEZE = Path(__file__).resolve().parents[1] / "tests" / "data" / "colab" / "pip-freeze.gpu.txt"
CUDA_WHEELS = re.compile(r"^(nvidia-|cuda-)", re.I)
_VERSION_IN_FILE = re.compile(r"-(\d[\w.!+]*?)(?:-py\d|-cp\d|\.tar\.gz$|\.zip$|\.whl$)")


def canonical(name: str) -> str:
    """Return a distribution name as pip compares it (PEP 503: lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path=FREEZE) -> list[tuple[str, str | None, bool]]:
    """Return (name, version, from_url) for every package of a pip freeze file.

    A package installed from a URL ("name @ https://.../name-1.0-py3-none-any.whl") gets the version its file name
    carries, or None (a git URL).
    """
    packages = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if " @ " in line:
            name, url = (part.strip() for part in line.split(" @ ", 1))
            found = _VERSION_IN_FILE.search(url.rsplit("/", 1)[-1].split("#", 1)[0])
            packages.append((name, found.group(1) if found else None, True))
        elif "==" in line:
            name, version = line.split("==", 1)
            packages.append((name.strip(), version.strip(), False))
    return packages


def constraints(path=FREEZE) -> str:
    """Return pip constraints that pin Colab's versions for a real install from PyPI (see the module docstring)."""
    lines = [f"{name}=={version.split('+', 1)[0]}" for name, version, from_url in read_freeze(path)
             if version and not from_url and not CUDA_WHEELS.match(name)]
    return "\n".join(lines) + "\n"


def site_packages(python) -> Path:
    """Return the site-packages folder of the interpreter python."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def installed(python) -> dict[str, str]:
    """Return {canonical name: version} of what pip lists in python's environment (PYTHONPATH left out, as in Colab)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                         check=True, env=env)
    return {canonical(line.split("==")[0]): line.split("==")[1] for line in out.stdout.splitlines() if "==" in line}


def stub(python, path=FREEZE) -> int:
    """Mark every package of the freeze file installed in python's environment (metadata only); return how many.

    Packages the environment already has (pip itself) and those without a known version keep what is there.
    """
    target, present, count = site_packages(python), installed(python), 0
    for name, version, _ in read_freeze(path):
        if version is None or canonical(name) in present:
            continue
        folder = target / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
        folder.mkdir(exist_ok=True)
        (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
        (folder / "INSTALLER").write_text("mp3kit colab stand-in\n", encoding="utf-8")
        count += 1
    return count


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["constraints"] and len(args) <= 2:
        sys.stdout.write(constraints(*args[1:]))
        return 0
    if args[:1] == ["stub"] and 2 <= len(args) <= 3:
        print(f"{stub(*args[1:])} Colab packages marked installed for {args[1]}")
        return 0
    print(__doc__.split("\n\n", 1)[0], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The project's set-up files agree with each other and the console entry points work."""

import json
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda name where they differ


def _names(requirements):
    return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def _conda_names():
    names = set()
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s*-\s+([A-Za-z0-9_.\-]+)", line)
        if m:
            names.add(m.group(1).lower())
    return names


def test_environment_yml_names_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = _conda_names()
    missing = [n for n in _names(project["dependencies"]) if CONDA_NAMES.get(n, n) not in conda]
    assert not missing, f"environment.yml lacks runtime dependencies {missing}"


def test_environment_yml_names_every_dev_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = _conda_names()
    missing = [n for n in _names(project["optional-dependencies"]["dev"]) if CONDA_NAMES.get(n, n) not in conda]
    assert not missing, f"environment.yml lacks dev dependencies {missing}"


def test_python_dash_m_and_console_script_show_help():
    out = subprocess.run([sys.executable, "-m", "mp3kit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "report" in out.stdout and "train" in out.stdout
    script = Path(sys.executable).with_name("mp3kit")
    out = subprocess.run([str(script), "data", "synth", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--root" in out.stdout


def test_every_subcommand_has_help():
    for argv in (["data", "fetch"], ["data", "check"], ["train"], ["runs"], ["submit"], ["bench"], ["report"]):
        out = subprocess.run([sys.executable, "-m", "mp3kit", *argv, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, argv
        assert "usage: mp3kit" in out.stdout


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make report" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^report:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_measure_report_times_the_report_make_report_builds(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure_report", ROOT / "tools" / "measure_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    commands = []
    monkeypatch.setattr(tool, "measure", lambda command, env, interval: commands.append(command) or {"exit_status": 0})
    monkeypatch.setattr(tool, "bench_reference", lambda env: {})
    assert tool.main(["--state", "warm"]) == 0
    recipe = re.search(r"^report:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    given = re.findall(r"--set (\S+)", recipe)
    assert given == ["WORKED_EXAMPLE=True"]  # the worked example's ablation is most of the report's training
    (command,) = commands
    assert [c.split("=", 1)[1] for c in command if c.startswith("--set=")] == given
    assert json.loads(capsys.readouterr().out)["command"] == "mp3kit report --profile quick --set WORKED_EXAMPLE=True"


def _specs(requirements) -> dict:
    """Return {name: version specifier} of requirement strings, e.g. {"ipykernel": ">=6.17"}."""
    out = {}
    for r in requirements:
        name = re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].strip().lower()
        out[CONDA_NAMES.get(name, name)] = r[len(name):].replace(" ", "")
    return out


def test_environment_yml_asks_for_the_same_versions_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s*-\s+([A-Za-z0-9_.\-]+)([<>=!~][^\s#]*)?\s*$", line)
        if m:
            conda[m.group(1).lower()] = m.group(2) or ""
    wanted = _specs(project["dependencies"] + project["optional-dependencies"]["dev"])
    differ = {n: (spec, conda.get(n)) for n, spec in wanted.items() if conda.get(n, spec) != spec}
    assert not differ, f"environment.yml and pyproject.toml ask for different versions (pyproject, conda): {differ}"


def test_every_lower_bound_admits_what_colab_ships():
    # The notebooks' Colab cell keeps every package Colab has; a lower bound above Colab's version could not be met.
    from packaging.specifiers import SpecifierSet

    colab = {}
    for line in (ROOT / "tests" / "data" / "colab" / "pip-freeze.gpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            colab[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+", 1)[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    refused = [f"{r} (Colab has {colab[n]})" for r in project["dependencies"]
               for n in [re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].strip().lower()]
               if n in colab and not SpecifierSet(r[len(n):].split(";")[0]).contains(colab[n], prereleases=True)]
    assert not refused, f"these requirements refuse the version Colab ships: {refused}"


def test_the_readme_links_docs_pages_that_exist_and_say_when_they_were_written():
    # The README keeps what a student and an instructor need; the investigation notes live in docs/, each page dated.
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert linked == pages and pages >= {"docs/design-notes.md", "docs/measurements.md", "docs/contributing.md"}
    for page in pages:
        assert re.search(r"^\*Updated \d{4}-\d{2}-\d{2}\.\*", (ROOT / page).read_text(), re.M), f"{page} has no date"
    # The quick loop the contributing page promises is a make target, and it leaves out the slow tests.
    assert re.search(r'^test-quick:.*\n(\t.*\n)*\t.*-m "not slow"', (ROOT / "Makefile").read_text(), re.M)

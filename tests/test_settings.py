"""mp3kit.settings: every MP3KIT_* environment variable, read through one accessor each."""

from pathlib import Path

from mp3kit import data, pipeline, settings, synth


def test_each_accessor_reads_its_variable_and_falls_back_to_the_default(monkeypatch, tmp_path):
    for name in settings.ALL:
        monkeypatch.delenv(name, raising=False)
    assert settings.alexnet_weights() is None and settings.allow_download() is False
    assert settings.cache_dir() == Path.home() / ".cache" / "mp3kit"
    defaults = (settings.profile(), settings.quiet(), settings.runs_dir(), settings.figures_dir(),
                settings.report_running())
    assert defaults == ("quick", None, None, None, False)
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, "~/w.pth")
    monkeypatch.setenv(settings.ALLOW_DOWNLOAD, "1")
    monkeypatch.setenv(settings.CACHE, str(tmp_path))
    monkeypatch.setenv(settings.PROFILE, "smoke")
    monkeypatch.setenv(settings.RUNS_DIR, "r")
    monkeypatch.setenv(settings.FIGURES_DIR, "~/f")
    monkeypatch.setenv(settings.REPORT_RUNNING, "1")
    assert settings.alexnet_weights() == Path.home() / "w.pth" and settings.allow_download() is True
    assert settings.cache_dir() == tmp_path
    assert (settings.profile(), settings.runs_dir(), settings.figures_dir()) == ("smoke", Path("r"), Path.home() / "f")
    assert settings.report_running() is True


def test_quiet_says_hide_show_or_unset(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False), ("", None), ("  ", None)):
        monkeypatch.setenv(settings.QUIET, value)
        assert settings.quiet() is expected, value


def test_a_leading_tilde_set_where_no_shell_expands_it_means_the_home_folder(monkeypatch, tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for name, value in ((settings.CACHE, "~/mp3cache"), (settings.RUNS_DIR, "~/runs"), (settings.FIGURES_DIR, "~/figs"),
                        (settings.ALEXNET_WEIGHTS, "~/w.pth")):
        monkeypatch.setenv(name, value)  # as os.environ[...] = or %env sets it
    assert settings.cache_dir() == home / "mp3cache"
    assert (settings.runs_dir(), settings.figures_dir()) == (home / "runs", home / "figs")
    assert settings.alexnet_weights() == home / "w.pth"

    devkit = synth.ensure_synthetic(n_images=4)  # the synthetic set and the image cache land in the same place
    assert devkit == home / "mp3cache" / "synthetic-voc" / "VOCdevkit"
    pipeline.cache_images(data.load_split(devkit, "train"), 32, progress=False)
    assert sorted(p.name for p in (home / "mp3cache").iterdir()) == ["images", "synthetic-voc"]
    assert list(work.iterdir()) == []  # no folder literally named ~

    monkeypatch.setenv(settings.CACHE, "$HOME/x~")  # only a leading ~ is expanded, nothing else
    assert settings.cache_dir() == Path("$HOME/x~")

"""mp3kit.settings: every MP3KIT_* environment variable, read through one accessor each."""

from pathlib import Path

from mp3kit import settings


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

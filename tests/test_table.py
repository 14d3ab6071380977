"""The one table renderer: markdown for notebooks and the report, aligned text for the CLI, HTML for the panel."""

from mp3kit.experiment import Table as ExperimentTable
from mp3kit.table import MISSING, Table, format_cell


def test_markdown_aligns_numbers_right_and_escapes_cells():
    table = Table([{"run": "a|b", "epochs": 1200, "mAP": 0.12345, "loss": None}], note="A note.")
    assert table.to_markdown() == ("| run | epochs | mAP | loss |\n|---|---:|---:|---|\n| a\\|b | 1,200 | 0.1235 | – |\n"
                                   "\nA note.\n")
    assert table._repr_markdown_() == table.to_markdown()


def test_text_is_aligned_and_explicit_alignment_applies_to_every_format():
    rows = [["simple-1", "complete", 3, 0.5, None], ["b", "stopped", 12, float("nan"), 0.25]]
    table = Table(rows, ["name", "status", "epochs", "test mAP", "best val"], align=["left", "left", "right", "right", "right"])
    assert table.to_text().splitlines() == [
        "name      status    epochs  test mAP  best val",
        "--------  --------  ------  --------  --------",
        "simple-1  complete       3    0.5000         –",
        "b         stopped       12         –    0.2500",
    ]
    assert table.to_markdown().splitlines()[1] == "|---|---|---:|---:|---:|"
    assert repr(table) == table.to_text()


def test_html_escapes_cells_and_bolds_the_rows_asked_for():
    html = Table([["<x>", "1"], ["y", "2"]], ["name", "n"], align=["left", "right"]).to_html("Runs", bold_rows=[1])
    assert "<caption style='text-align:left'>Runs</caption>" in html and "&lt;x&gt;" in html
    assert '<td style="font-weight:bold;padding:2px 10px;text-align:right">2</td>' in html
    assert '<td style="padding:2px 10px;text-align:left">&lt;x&gt;</td>' in html


def test_cells_and_the_experiment_re_export():
    cells = [format_cell(v) for v in (None, float("nan"), True, 12345, 0.5, "x")]
    assert cells == [MISSING, MISSING, "True", "12,345", "0.5000", "x"]
    assert MISSING == "–"  # one mark for a missing value everywhere (tables, report, panel)
    assert ExperimentTable is Table

"""``delve report RUN``: the findings of a run from its folder alone, printed as a table and in words.

The runs are written by a tracker and judged again from their files; the
expected findings follow from the models' construction (a conv stack whose
copies keep fewer channels past a 4-pixel input's border; a square Linear
layer fed a 2-dimensional signal), hand-computed fields (1 + 2L pixels), and
a run record of format 2 written by hand, as delve wrote it before facts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from copying_stack import copying_stack
from matplotlib import image as mpimg
from torch import nn

from delve import SaturationTracker, load_results
from delve.cli import main
from delve.output.formats.record import read_record


@pytest.fixture(scope="module")
def tail_run(tmp_path_factory) -> Path:
    savefile = tmp_path_factory.mktemp("report") / "stack"
    model = copying_stack()
    with SaturationTracker(str(savefile), save_to=["csv", "plot"], modules=model, stats=["lsat", "idim"]) as tracker:
        for _ in range(3):
            model(torch.randn(1024, 1, 4, 4))
            tracker.add_saturations()
        report = tracker.report()
    assert report["findings"].str.contains("tail").tolist() == [False, True, True, True, True]
    return savefile


def printed_table(text: str) -> list[list[str]]:
    lines = text.splitlines()
    end = lines.index("")
    return [line.split() for line in lines[1:end]]


def test_report_prints_the_table_then_the_findings_in_words(tail_run, capsys) -> None:
    assert main(["report", str(tail_run)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "delve report, epoch 2: 5 layers, 3 findings"  # the tail, and two idle layers in it
    table = printed_table(text)
    assert table[0] == ["layer", "width", "saturation", "k", "bound", "rf_min", "findings"]
    # Layers named from the run record (the model is not here), fields hand-computed: 1 + 2L.
    assert [row[:4] for row in table[1:]] == [[str(i), "(Conv2d", f"{1 if i == 0 else 8}->8)", "8"] for i in range(5)]
    assert [row[7] for row in table[1:]] == ["3x3", "5x5", "7x7", "9x9", "11x11"]
    frame = pd.read_csv(f"{tail_run}.csv", sep=";", index_col=0)
    assert [float(row[4]) for row in table[1:]] == pytest.approx(
        [frame[f"train-saturation_{i}"].iloc[-1] for i in range(5)], abs=5.01e-3
    )
    findings = text[text.index("\nFindings\n") :]
    assert "  tail        1 (Conv2d 8->8) to 4 (Conv2d 8->8) (4 layers)" in findings
    words = " ".join(findings.split())  # the findings are wrapped at 100 columns
    assert "past the border: fields of 5x5 on an input of 4x4" in words
    assert "do: Remove 1 to 4, or raise the input resolution to about 5x5 pixels" in words
    # Layers 3 and 4 keep 3 and 1 of the 8 directions they could use: at most half.
    assert "  idle-width  3 (Conv2d 8->8)" in findings and "  idle-width  4 (Conv2d 8->8)" in findings
    assert findings.count("as for the tail above") == 2


def test_report_of_a_folder_and_of_a_csv(tail_run, capsys) -> None:
    assert main(["report", f"{tail_run}.csv"]) == 0
    one = capsys.readouterr().out
    assert main(["report", str(tail_run.parent)]) == 0  # the folder holds this one run
    assert capsys.readouterr().out == one
    (tail_run.parent / "copy.csv").write_text(Path(f"{tail_run}.csv").read_text())
    assert main(["report", str(tail_run.parent)]) == 0
    both = capsys.readouterr().out
    assert both.startswith(f"== copy ({tail_run.parent / 'copy.csv'})\n")
    assert both.endswith(f"\n\n== stack ({tail_run}.csv)\n" + one)
    (tail_run.parent / "copy.csv").unlink()


def test_no_findings_is_said_and_exits_0(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    with SaturationTracker(str(tmp_path / "plain"), modules=model) as tracker:
        for _ in range(3):
            model(torch.randn(512, 4))
            tracker.add_saturations()
    assert main(["report", str(tmp_path / "plain")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "delve report, epoch 2: 1 layer, no findings"
    assert "No findings: no tail, no idle width, no dead layer, and enough rows" in text


def test_a_format_2_record_without_facts_is_judged_on_its_values(tail_run, tmp_path, capsys) -> None:
    record = json.loads(Path(f"{tail_run}.run.json").read_text())
    old = {key: value for key, value in record.items() if key != "facts"}
    (tmp_path / "old.run.json").write_text(json.dumps({**old, "format": 2}))
    (tmp_path / "old.csv").write_text(Path(f"{tail_run}.csv").read_text())
    assert read_record(tmp_path / "old").facts == {}
    assert main(["report", str(tmp_path / "old")]) == 0
    text = capsys.readouterr().out
    # Without receptive fields and without probes nothing shows the layers add nothing: no tail, only idle width.
    assert "rf_min" not in text and "tail" not in text
    assert text.splitlines()[0] == "delve report, epoch 2: 5 layers, 2 findings"
    assert "  idle-width  3 (Conv2d 8->8)" in text and "  idle-width  4 (Conv2d 8->8)" in text


def test_a_run_without_per_layer_values_is_one_line_exit_2(tmp_path, capsys) -> None:
    (tmp_path / "empty.csv").write_text("epoch;loss\n0;1.0\n")
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().endswith("holds no per-layer values to judge")


def test_the_plot_writer_and_delve_plot_draw_the_verdict_figure(tail_run, tmp_path, capsys) -> None:
    drawn = mpimg.imread(tail_run / "plots" / "verdicts.png")
    assert drawn.shape[0] > 300 and drawn.shape[1] > 500 and drawn[..., :3].std() > 0.05
    assert main(["plot", str(tail_run), "--out", str(tmp_path / "again")]) == 0
    redrawn = mpimg.imread(tmp_path / "again" / "verdicts.png")
    assert redrawn.shape == drawn.shape
    assert len(load_results(tail_run)) > 0

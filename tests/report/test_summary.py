from __future__ import annotations

from conftest import epoch_record
from rich.console import Console

from hamsweep.report.summary import cost, render
from hamsweep.results.read import read_table
from hamsweep.results.schema import CLASSES, EPOCHS, class_rows, epoch_rows
from hamsweep.results.writer import PartWriter


def _tables(tmp_path):
    w = PartWriter(tmp_path)
    for epoch in (1, 2):
        rec = epoch_record(epoch, correct=(3, 1) if epoch == 1 else (4, 2))
        w.append(EPOCHS, epoch_rows("t", rec, 0.2))
        w.append(CLASSES, class_rows("t", rec, ["cat", "dog"]))
    return read_table(tmp_path, EPOCHS), read_table(tmp_path, CLASSES)


def test_cost_is_measured_against_pgd_at_on_the_same_images(tmp_path):
    epochs, _ = _tables(tmp_path)
    k = cost(epochs)
    assert k["attack_ratio"] == 0.5  # 40 of 80 example-steps, each epoch
    assert k["pass_ratio"] == (40 + 4) / (80 + 8)


def test_report_shows_the_latest_epoch_per_class_and_marks_the_weakest(tmp_path):
    epochs, classes = _tables(tmp_path)
    console = Console(record=True, width=120, color_system="truecolor")
    console.print(render(epochs, classes, cvar_fraction=0.2))
    text = console.export_text(clear=False)
    assert "val split, epoch 2" in text
    assert "dog" in text and " 50.0" in text and "100.0" in text  # dog: 2/4 under pgd20 at epoch 2
    styled = console.export_text(styles=True)
    # the weakest class is highlighted
    assert "\x1b[1;31mdog" in styled and "\x1b[1;31mcat" not in styled
    assert "forward+backward passes x0.500" in text

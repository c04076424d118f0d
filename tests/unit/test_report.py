"""The per-class Dice report reads nnU-Net's summary.json layout (keys are label values as strings)."""
import csv
import math

from nnunet_dinomix.report import dice_rows, per_class_dice, rarest_classes, to_markdown, write_report

LABELS = {"background": 0, "liver": 1, "adrenal": 2}


def _summary(liver, adrenal):
    # the layout nnunetv2.evaluation.evaluate_predictions.save_summary_json writes
    return {"foreground_mean": {"Dice": (liver + adrenal) / 2},
            "mean": {"1": {"Dice": liver, "IoU": 0.0}, "2": {"Dice": adrenal, "IoU": 0.0}},
            "metric_per_case": []}


def test_rows_follow_label_values_not_order():
    s = _summary(0.9, 0.1)
    assert per_class_dice(s, LABELS) == {"liver": 0.9, "adrenal": 0.1}
    assert per_class_dice(s, {"background": 0, "adrenal": 2, "liver": 1}) == {"adrenal": 0.1, "liver": 0.9}
    missing = per_class_dice({"mean": {"1": {"Dice": 0.5}}, "foreground_mean": {"Dice": 0.5}}, LABELS)
    assert math.isnan(missing["adrenal"])


def test_markdown_csv_and_png(tmp_path):
    summaries = {"A": _summary(0.9, 0.1), "B": _summary(0.8, float("nan"))}
    rows = dice_rows(summaries, LABELS)
    md = to_markdown(rows, ["A", "B"])
    assert "| liver | 90.0 | 80.0 |" in md and "| adrenal | 10.0 | n/a |" in md
    assert "| mean (foreground) | 50.0 |" in md
    paths = write_report(summaries, LABELS, str(tmp_path), title="t")
    with open(paths["csv"]) as f:
        table = list(csv.reader(f))
    assert table[0] == ["class", "A", "B"] and table[1] == ["liver", "90.00", "80.00"]
    assert (tmp_path / "dice.png").stat().st_size > 1000


def test_tail_mean_over_the_rarest_classes():
    labels = {"background": 0, "liver": 1, "adrenal": 2, "gallbladder": 3}
    counts = {"background": 10 ** 6, "liver": 5000, "adrenal": 20, "gallbladder": 300}
    assert rarest_classes(counts, 2) == ["adrenal", "gallbladder"]
    summary = {"foreground_mean": {"Dice": 0.5},
               "mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.2}, "3": {"Dice": float("nan")}}}
    rows = dice_rows({"A": summary}, labels, rarest_classes(counts, 2))
    assert rows[-1]["class"] == "mean (2 rarest: adrenal, gallbladder)"
    assert rows[-1]["A"] == 0.2  # a class absent everywhere (NaN) does not count

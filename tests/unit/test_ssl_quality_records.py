"""benchmarks/ssl_quality.py's records: a result file read back gives the records it was written from (to the 0.1
points it rounds to), and merging refuses two different runs under one label."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import ssl_quality  # noqa: E402

from nnunet_dinomix.phantom.generator import LABELS  # noqa: E402

CLASSES = [c for c in LABELS if c != "background"]


def _record(label, seed, offset):
    dice = {c: min(1.0, 0.1 * i + offset) for i, c in enumerate(CLASSES)}
    dice["adrenal"] = float("nan")  # a class with no prediction and no truth in any test case
    fm = sum(v for v in dice.values() if v == v) / (len(dice) - 1)
    return {"label": label, "seed": seed, "dice": dice, "foreground_mean": fm, "train_s": 600.0 + 60 * seed}


def test_a_result_file_reads_back_as_its_records(tmp_path):
    records = [_record("plain", 1, 0.0123), _record("MT", 1, 0.0456), _record("plain", 2, 0.0789)]
    text = ssl_quality.report(records, ["plain", "MT", "absent"], ["adrenal", "gallbladder", "pancreas"], ["# r"])
    path = tmp_path / "r.md"
    path.write_text(text)
    back = {(r["label"], r["seed"]): r for r in ssl_quality.records_from_report(str(path))}
    assert set(back) == {("plain", 1), ("MT", 1), ("plain", 2)}  # no record where the report says n/a
    for r in records:
        b = back[(r["label"], r["seed"])]
        assert b["rounded"] and b["train_s"] == pytest.approx(r["train_s"], abs=3)
        assert b["foreground_mean"] == pytest.approx(r["foreground_mean"], abs=5e-4)
        for c in CLASSES:
            if c == "adrenal":
                assert b["dice"][c] != b["dice"][c]  # nan stays nan
            else:
                assert b["dice"][c] == pytest.approx(r["dice"][c], abs=5e-4)


def test_merging_prefers_exact_records_renames_and_refuses_two_runs_under_one_label(tmp_path):
    exact = [_record("nnU-Net (resumed)", 3, 0.0123)]
    text = ssl_quality.report([_record("resumed-s0", 3, 0.0123)], ["resumed-s0"], ["gallbladder"], ["# r"])
    assert "Paired difference" not in text  # one run: no empty table of differences
    (tmp_path / "old.md").write_text(text)
    (tmp_path / "new.json").write_text(json.dumps(exact))
    merged = ssl_quality.merged_records([str(tmp_path / "old.md"), str(tmp_path / "new.json")],
                                        {"resumed-s0": "nnU-Net (resumed)"})
    assert len(merged) == 1 and "rounded" not in merged[0]  # the exact record, not the one read back
    assert merged[0]["label"] == "nnU-Net (resumed)" and merged[0]["foreground_mean"] == exact[0]["foreground_mean"]
    (tmp_path / "other.json").write_text(json.dumps([_record("nnU-Net (resumed)", 3, 0.02)]))
    with pytest.raises(SystemExit, match="two different runs carry one label"):
        ssl_quality.merged_records([str(tmp_path / "new.json"), str(tmp_path / "other.json")])


def test_a_rebuilt_report_keeps_the_command_machine_and_wall_clock_of_the_run_that_trained():
    header = ["# r", "- date: today", "- machine: 2 runs side by side",
              "- command: `python benchmarks/ssl_quality.py --report-only --name r`",
              "- total wall-clock: see the first run of this report"]
    trained = ("# r\n- machine: 1 runs side by side\n- command: `python benchmarks/ssl_quality.py --seeds 2 --name r`\n"
               "- total wall-clock: 55 min\n")
    rebuilt = ssl_quality.rebuilt_header(header, trained)
    assert rebuilt == ["# r", "- date: today", "- machine: 1 runs side by side",
                       "- command: `python benchmarks/ssl_quality.py --seeds 2 --name r`",
                       "- rebuilt with: `python benchmarks/ssl_quality.py --report-only --name r`",
                       "- total wall-clock: 55 min"]
    # rebuilt twice: the training command is still the one kept, and only the latest rebuild is named
    again = ssl_quality.rebuilt_header(header, "\n".join(rebuilt))
    assert again == rebuilt
    # a report that was only ever rebuilt (a merge of other runs) has no training command to keep
    assert ssl_quality.rebuilt_header(header, "\n".join(header)) == header
    assert ssl_quality.rebuilt_header(header, "") == header


def test_pair_of_takes_a_columns_differences_to_its_own_pair(tmp_path):
    records = [_record("plain", 2, 0.0), _record("plain-s1", 2, 0.05), _record("ssl-s1", 2, 0.07),
               _record("ssl", 2, 0.02)]
    text = ssl_quality.report(records, ["plain", "ssl", "plain-s1", "ssl-s1"], ["gallbladder"], ["# r"],
                              pair_of={"ssl-s1": "plain-s1"})
    lines = text.splitlines()
    head = lines.index("## Paired difference to plain (Dice points, mean ± std over seeds; per seed in brackets)")
    assert lines[head + 2] == "| class | ssl | plain-s1 | ssl-s1 (vs plain-s1) |"
    liver = lines[head + 4]
    assert liver == "| liver | 2.0 [+2.0] | 5.0 [+5.0] | 2.0 [+2.0] |"  # ssl-s1 - plain-s1, not ssl-s1 - plain
    # the read-back of a report is untouched by the renamed column heads
    (tmp_path / "r.md").write_text(text)
    back = ssl_quality.records_from_report(str(tmp_path / "r.md"))
    assert {(r["label"], r["seed"]) for r in back} == {(r["label"], r["seed"]) for r in records}
    with pytest.raises(SystemExit, match="no run labelled 'nope'"):
        ssl_quality.report(records, ["plain", "ssl"], ["gallbladder"], ["# r"], pair_of={"ssl": "nope"})


def test_the_tier_trains_the_plans_its_preset_derives():
    from argparse import Namespace
    preset = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "presets", "cpu_tier_small.json")
    args = dict(device="cpu", data_workers=None, jobs=2, plans=None, preset=None)
    default = ssl_quality.tier_of(Namespace(**args))
    assert (default.plans, default.preset) == ("nnUNetPlansTinyCPU", "tiny_cpu")
    small = ssl_quality.tier_of(Namespace(**dict(args, preset=preset)))
    assert small.plans == "nnUNetPlansCPUTierSmall" and os.path.isabs(small.preset)
    gpu = ssl_quality.tier_of(Namespace(**dict(args, device="cuda")))
    assert (gpu.plans, gpu.preset) == ("nnUNetPlans", None)
    with pytest.raises(SystemExit):
        ssl_quality.main(["--preset", preset, "--plans", "nnUNetPlans", "--name", "refused"])


def test_the_anchor_trains_with_its_references_settings():
    # an anchor with nnU-Net's default mirroring beside a reference without left-right mirroring would pair two
    # protocols (benchmarks/results/README.md, 2026-12-07)
    reference = ssl_quality.Run("plain", "nnUNetTrainerBudget", '{"only_mirror_axes": [0, 1]}',
                                ssl_quality.DATASET, 3)
    anchor = ssl_quality.anchor_run(reference)
    assert (anchor.label, anchor.trainer, anchor.settings) == (ssl_quality.ANCHOR, "nnUNetTrainerBudget",
                                                               '{"only_mirror_axes": [0, 1]}')
    assert (anchor.dataset, anchor.seed, anchor.start_from) == (ssl_quality.ANCHOR_DATASET, 3, reference)
    assert ssl_quality.anchor_run(ssl_quality.Run("plain", "nnUNetTrainerBudget", None, 990, 1)).settings is None


def test_a_lone_reference_trains_first_on_all_the_cores():
    # a run waiting for the reference's snapshot would hold a worker (and its cores) idle for half a run
    Run = ssl_quality.Run
    ref = Run("plain", "nnUNetTrainerBudget", None, ssl_quality.DATASET, 1)
    resumed = [Run(label, "nnUNetTrainerBudget", None, ssl_quality.DATASET, 1, start_from=ref) for label in "ab"]
    assert ssl_quality.stages(resumed + [ref], jobs=2) == [([ref], 1), (resumed, 2)]
    upper = Run(ssl_quality.UPPER, "nnUNetTrainerBudget", None, ssl_quality.FULL_DATASET, 1)
    assert ssl_quality.stages([ref, upper] + resumed, jobs=2) == [([ref, upper] + resumed, 2)]  # nothing idles
    assert ssl_quality.stages([ref] + resumed, jobs=1) == [([ref] + resumed, 1)]
    ref.reused = {"label": "plain"}  # --reference-from: nothing to train before the resumed runs
    assert ssl_quality.stages(resumed + [ref], jobs=2) == [([ref] + resumed, 2)]

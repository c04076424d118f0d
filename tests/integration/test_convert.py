"""Benchmark converters on tiny volumes written in the exact Synapse and AMOS download layouts and file names."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_dinomix.convert.benchmark import convert_amos, convert_synapse
from nnunet_dinomix.convert.splits import AMOS, SYNAPSE, choose_labeled
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.paths import UNLABELED_RAW_FOLDER


def _write(path, value):
    array = np.full((3, 4, 4), value, dtype=np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.fixture(scope="module")
def synapse_download(tmp_path_factory):
    """RawData/Training/{img,label}: the 30 labelled BTCV cases; every image's voxels hold its case number."""
    root = tmp_path_factory.mktemp("synapse")
    img, label = root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"
    img.mkdir(parents=True)
    label.mkdir()
    for i in list(range(1, 11)) + list(range(21, 41)):
        _write(img / f"img{i:04d}.nii.gz", i)
        _write(label / f"label{i:04d}.nii.gz", i % 14)
    (root / "RawData" / "Testing" / "img").mkdir(parents=True)  # the unlabelled BTCV test set, not used
    return root


@pytest.fixture(scope="module")
def amos_download(tmp_path_factory):
    root = tmp_path_factory.mktemp("amos")
    for d in ("imagesTr", "labelsTr", "imagesVa", "labelsVa"):
        (root / d).mkdir()
    for i in AMOS["train"] + AMOS["eval"]:
        _write(root / "imagesTr" / f"amos_{i}.nii.gz", int(i))
        _write(root / "labelsTr" / f"amos_{i}.nii.gz", 1)
    for i in AMOS["test"]:
        _write(root / "imagesVa" / f"amos_{i}.nii.gz", int(i))
        _write(root / "labelsVa" / f"amos_{i}.nii.gz", 2)
    names = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
             "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
             "prostate/uterus"]
    (root / "dataset.json").write_text(json.dumps({"name": "AMOS", "labels": {str(i): n for i, n in enumerate(names)}}))
    return root


def _case_ids(folder, prefix):
    return sorted(f[len(prefix) + 1:len(prefix) + 5] for f in os.listdir(folder) if f.startswith(prefix + "_"))


def _voxel(path):
    return int(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).flat[0])


@pytest.mark.parametrize("ratio,expected", [(20, ["0009", "0021", "0025", "0034"]), (10, None), (40, None)])
def test_synapse_split_and_layout(synapse_download, tmp_path, ratio, expected):
    folder = convert_synapse(str(synapse_download), str(tmp_path), 501, ratio=ratio, verbose=False)
    assert os.path.basename(folder) == f"Dataset501_Synapse{ratio}p"
    labeled = _case_ids(os.path.join(folder, "imagesTr"), "synapse")
    unlabeled = _case_ids(os.path.join(folder, UNLABELED_RAW_FOLDER), "synapse")
    test = _case_ids(os.path.join(folder, "imagesTs"), "synapse")
    assert len(labeled) == {10: 2, 20: 4, 40: 8}[ratio]
    if expected:
        assert labeled == expected
    else:  # seeded and nested with the published 20% list
        published = set(SYNAPSE["labeled"][20])
        assert published <= set(labeled) if ratio == 40 else set(labeled) <= published
    assert test == ["0008", "0027", "0029", "0033", "0037", "0039"]
    assert sorted(labeled + unlabeled) == sorted(SYNAPSE["train"])  # the 20 training cases, nothing else
    assert not set(test) & set(labeled + unlabeled) and not set(SYNAPSE["eval"]) & set(labeled + unlabeled + test)
    assert _case_ids(os.path.join(folder, "labelsTr"), "synapse") == labeled
    assert _case_ids(os.path.join(folder, "labelsTs"), "synapse") == test
    assert not any("label" in f for f in os.listdir(os.path.join(folder, UNLABELED_RAW_FOLDER)))
    # files are the right ones, in nnU-Net's naming
    assert _voxel(os.path.join(folder, "imagesTr", f"synapse_{labeled[0]}_0000.nii.gz")) == int(labeled[0])
    assert _voxel(os.path.join(folder, "labelsTs", "synapse_0027.nii.gz")) == 27 % 14
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["numTraining"] == len(labeled) and dataset["labels"]["left_adrenal_gland"] == 13
    record = json.load(open(os.path.join(folder, "dinomix_split.json")))
    assert record["labeled"] == labeled and record["evaluation_not_written"] == SYNAPSE["eval"]
    assert ("published" in record["labeled_choice"]) and (("seeded" in record["labeled_choice"]) == (ratio != 20))


def test_files_are_linked_or_copied_never_moved(synapse_download, tmp_path):
    source = synapse_download / "RawData" / "Training" / "img" / "img0009.nii.gz"
    linked = convert_synapse(str(synapse_download), str(tmp_path / "a"), 502, verbose=False)
    target = os.path.join(linked, "imagesTr", "synapse_0009_0000.nii.gz")
    assert source.is_file() and os.path.samefile(source, target)
    copied = convert_synapse(str(synapse_download), str(tmp_path / "b"), 502, copy=True, verbose=False)
    target = os.path.join(copied, "imagesTr", "synapse_0009_0000.nii.gz")
    assert not os.path.samefile(source, target) and open(source, "rb").read() == open(target, "rb").read()
    with pytest.raises(DinoMixError, match="Dataset ID 502 is already used"):
        convert_synapse(str(synapse_download), str(tmp_path / "b"), 502, verbose=False)


def test_incomplete_or_wrong_input_is_reported_with_what_is_missing(synapse_download, tmp_path):
    with pytest.raises(DinoMixError, match="expected img/ and label/"):
        convert_synapse(str(tmp_path), str(tmp_path / "raw"), 503, verbose=False)
    partial = tmp_path / "partial"
    for sub in ("img", "label"):
        (partial / sub).mkdir(parents=True)
    for i in SYNAPSE["train"] + SYNAPSE["test"]:
        if i != "0027":
            _write(partial / "img" / f"img{i}.nii.gz", 1)
        if i != "0025":
            _write(partial / "label" / f"label{i}.nii.gz", 1)
    with pytest.raises(DinoMixError, match=r"(?s)labeled case 0025: label missing.*test case 0027: image missing"):
        convert_synapse(str(partial), str(tmp_path / "raw"), 503, verbose=False)
    assert not (tmp_path / "raw").exists() or not os.listdir(tmp_path / "raw")  # nothing written
    with pytest.raises(DinoMixError, match="imagesVa, labelsVa, dataset.json missing"):
        convert_amos(str(partial), str(tmp_path / "raw"), 504, verbose=False)


@pytest.mark.parametrize("ratio,count", [(2, 4), (5, 10), (10, 21)])
def test_amos_published_splits(amos_download, tmp_path, ratio, count):
    folder = convert_amos(str(amos_download), str(tmp_path), 505, ratio=ratio, verbose=False)
    labeled = _case_ids(os.path.join(folder, "imagesTr"), "amos")
    unlabeled = _case_ids(os.path.join(folder, UNLABELED_RAW_FOLDER), "amos")
    test = _case_ids(os.path.join(folder, "imagesTs"), "amos")
    assert labeled == AMOS["labeled"][ratio] and len(labeled) == count
    assert len(unlabeled) == 216 - count and len(test) == 120
    assert not set(test) & set(labeled + unlabeled) and not set(AMOS["eval"]) & set(labeled + unlabeled)
    assert _voxel(os.path.join(folder, "labelsTs", f"amos_{test[0]}.nii.gz")) == 2  # from labelsVa
    dataset = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset["labels"]["right_kidney"] == 2 and dataset["labels"]["prostate_uterus"] == 15
    assert len(dataset["labels"]) == 16


def test_amos_ct_only_drops_mr_and_reseeds_lists_that_lost_cases(amos_download, tmp_path):
    folder = convert_amos(str(amos_download), str(tmp_path), 506, ratio=5, ct_only=True, verbose=False)
    ids = [int(i) for sub in ("imagesTr", UNLABELED_RAW_FOLDER, "imagesTs")
           for i in _case_ids(os.path.join(folder, sub), "amos")]
    assert ids and max(ids) < 500
    record = json.load(open(os.path.join(folder, "dinomix_split.json")))
    assert record["ct_only"] and "seeded" in record["labeled_choice"]
    assert set(AMOS["labeled"][2]) <= set(record["labeled"])  # nested with the (all-CT) published 2% list
    two = convert_amos(str(amos_download), str(tmp_path), 507, ratio=2, ct_only=True, verbose=False)
    assert json.load(open(os.path.join(two, "dinomix_split.json")))["labeled"] == AMOS["labeled"][2]


def test_choose_labeled_is_reproducible_and_seed_dependent():
    train = [f"{i:04d}" for i in range(100)]
    a, _ = choose_labeled(train, 7, {}, seed=1)
    assert a == choose_labeled(train, 7, {}, seed=1)[0] and len(a) == 7
    assert a != choose_labeled(train, 7, {}, seed=2)[0]


def test_convert_and_evaluate_commands(synapse_download, tmp_path):
    """The two commands as a user runs them: convert, then score two prediction folders with the report."""
    import shutil

    from support import run_cli
    raw = tmp_path / "raw"
    out = run_cli("dinomix_convert", "synapse", "-i", synapse_download, "-d", 508, "-o", raw)
    assert "dinomix_preprocess_unlabeled -d 508" in out.stdout
    folder = raw / "Dataset508_Synapse20p"
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    shutil.copytree(folder / "labelsTs", perfect)
    empty.mkdir()
    for f in os.listdir(perfect):
        image = sitk.ReadImage(str(perfect / f))
        blank = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
        blank.CopyInformation(image)
        sitk.WriteImage(blank, str(empty / f))
    report = tmp_path / "report"
    result = run_cli("dinomix_evaluate", "-ref", folder / "labelsTs", "-djfile", folder / "dataset.json",
                     "-pred", f"perfect={perfect}", f"empty={empty}", "-train_labels", folder / "labelsTr",
                     "--published", "synapse_20", "-o", report)
    md = (report / "report.md").read_text()
    # case 0027 holds class 13 (left adrenal gland) only: perfect scores 100, empty scores 0 / ASD 128 voxels
    assert "| left_adrenal_gland |" in md
    per_class = (report / "per_class.csv").read_text().splitlines()
    perfect_row = [r for r in per_class if r.startswith("perfect,left_adrenal_gland,13,")][0].split(",")
    empty_row = [r for r in per_class if r.startswith("empty,left_adrenal_gland,13,")][0].split(",")
    assert float(perfect_row[5]) == 1.0 and float(perfect_row[6]) == 0.0  # Dice, ASD in mm
    assert float(empty_row[5]) == 0.0 and float(empty_row[9]) > 0  # Dice; benchmark voxel ASD is 128 for 0027
    assert "DHC (published, DHC protocol)" in md and "66.5" in md  # DINO-Mix's published mean, marked
    assert (report / "dice.png").is_file() and (report / "dice_vs_frequency.png").is_file()
    assert "Wrote" in result.stdout

    os.remove(empty / "synapse_0027.nii.gz")
    missing = run_cli("dinomix_evaluate", "-ref", folder / "labelsTs", "-djfile", folder / "dataset.json",
                      "-pred", f"empty={empty}", "-o", tmp_path / "r2", check=False)
    assert missing.returncode == 1 and "lacks predictions for 1 of 6" in missing.stderr


def test_reproduce_recipe_plans_the_protocol(synapse_download, monkeypatch):
    """dinomix_reproduce --dry_run on a converted dataset: every step, in order, with the protocol's published
    numbers; the FKD trainer is refused without weights before anything runs."""
    import shutil

    from support import run_cli
    raw = os.environ["nnUNet_raw"]
    folder = convert_synapse(str(synapse_download), raw, 509, verbose=False)
    try:
        out = run_cli("dinomix_reproduce", "-d", 509, "-tr", "nnUNetTrainer", "nnUNetTrainerDinoMixNoFKD",
                      "--dry_run", env_extra={"DINOMIX_DINOV3_WEIGHTS": ""}).stdout.splitlines()
        steps = [line.split("] ", 1)[1].split()[0] for line in out]
        assert steps == ["nnUNetv2_plan_and_preprocess", "dinomix_preprocess_unlabeled", "nnUNetv2_train",
                         "nnUNetv2_predict", "nnUNetv2_train", "nnUNetv2_predict", "dinomix_evaluate"]
        assert "--published synapse_20" in out[-1] and "nnUNetTrainerDinoMixNoFKD=" in out[-1]
        assert "-tr nnUNetTrainerDinoMixNoFKD" in out[4] and " all " in out[2]
        refused = run_cli("dinomix_reproduce", "-d", 509, "--dry_run", check=False,
                          env_extra={"DINOMIX_DINOV3_WEIGHTS": ""})
        assert refused.returncode == 1 and "need DINOv3 weights" in refused.stderr
    finally:
        shutil.rmtree(folder)


def test_reproduce_stops_at_the_first_failed_step_and_says_how_to_go_on():
    """A failing step ends dinomix_reproduce with exit code 1 and a message naming the step; no later step runs."""
    import shutil

    from support import run_cli
    name = "Dataset951_BrokenPlans"
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled"):
        os.makedirs(os.path.join(raw, sub))
    os.makedirs(pre)
    try:
        with open(os.path.join(raw, "dataset.json"), "w") as f:
            json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 0,
                       "file_ending": ".nii.gz"}, f)
        with open(os.path.join(pre, "nnUNetPlans.json"), "w") as f:
            f.write("{}")  # planned, so the first step is dinomix_preprocess_unlabeled, which refuses these plans
        out = run_cli("dinomix_reproduce", "-d", 951, "-tr", "nnUNetTrainer", "-device", "cpu", check=False)
        assert out.returncode == 1
        assert "[1/4]" in out.stdout and "dinomix_preprocess_unlabeled" in out.stdout and "[2/4]" not in out.stdout
        assert "is not an nnU-Net plans file" in out.stderr  # the step's own message
        assert "Step 1 of 4 failed" in out.stderr and "run dinomix_reproduce again" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        shutil.rmtree(raw)
        shutil.rmtree(pre)

"""Preprocessing the unlabeled pool: equality with nnU-Net's preprocessing, safety, resume, staleness, errors."""
import hashlib
import os
import pickle
import shutil

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json

from support import run_cli
from nnunet_dinomix.cli import doctor
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.cli.preprocess_unlabeled import main as cli_main
from nnunet_dinomix.unlabeled.pool import open_pool
from nnunet_dinomix.unlabeled.preprocess import preprocess_unlabeled

def _open(s, plans="nnUNetPlans", plans_dict=None):
    plans_dict = plans_dict or load_json(os.path.join(s["pre"], plans + ".json"))
    return open_pool(s["pre"], plans_dict, "3d_fullres", load_json(os.path.join(s["pre"], "dataset.json")), plans)


def _hash_tree(folder, skip=("_unlabeled",)):
    digest = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not any(k in d for k in skip)]
        for f in files:
            if not any(k in f for k in skip):
                path = os.path.join(root, f)
                digest[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


def test_pool_is_exactly_nnunet_preprocessing(scratch):
    shutil.copy(os.path.join(scratch["raw"], "imagesTr", "case_0000_0000.nii.gz"),
                os.path.join(scratch["unlabeled"], "copy_0000_0000.nii.gz"))
    result = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert "copy_0000" in result.processed and len(result.processed) == 5
    ours = blosc2.open(os.path.join(scratch["pool"], "copy_0000.b2nd"), mode="r")[:]
    nnunet = blosc2.open(os.path.join(scratch["pre"], "nnUNetPlans_3d_fullres", "case_0000.b2nd"), mode="r")[:]
    assert ours.dtype == np.float32 and np.array_equal(ours, nnunet)
    ours_props = pickle.load(open(os.path.join(scratch["pool"], "copy_0000.pkl"), "rb"))
    nnunet_props = pickle.load(open(os.path.join(scratch["pre"], "nnUNetPlans_3d_fullres", "case_0000.pkl"), "rb"))
    for key in ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
                "shape_after_cropping_and_before_resampling"):
        assert np.array_equal(np.asarray(ours_props[key]), np.asarray(nnunet_props[key])), key
    assert ours_props["class_locations"] == {}
    seg = blosc2.open(os.path.join(scratch["pool"], "copy_0000_seg.b2nd"), mode="r")[:]
    assert set(np.unique(seg).tolist()) <= {-1, 0}
    pool = _open(scratch)
    assert len(pool.identifiers) == 5
    data, seg_loaded, _, props = pool.dataset().load_case("copy_0000")
    assert data.shape == ours.shape


def test_diagnostic_labels_are_preprocessed_as_nnunet_preprocesses_labels(scratch, capsys):
    """labelsUnlabeled/ (diagnostics only) goes through nnU-Net's preprocessing with its image; a missing label
    warns and leaves that case without truth."""
    labels = os.path.join(scratch["raw"], "labelsUnlabeled")
    shutil.copy(os.path.join(scratch["raw"], "imagesTr", "case_0000_0000.nii.gz"),
                os.path.join(scratch["unlabeled"], "copy_0000_0000.nii.gz"))
    shutil.copy(os.path.join(scratch["raw"], "labelsTr", "case_0000.nii.gz"), os.path.join(labels, "copy_0000.nii.gz"))
    os.remove(os.path.join(labels, "case_0100.nii.gz"))
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    out = capsys.readouterr().out
    assert "WARNING" in out and "no label for 1 of 5 unlabeled cases (case_0100)" in out
    ours = blosc2.open(os.path.join(scratch["pool"], "copy_0000_seg.b2nd"), mode="r")[:]
    nnunet = blosc2.open(os.path.join(scratch["pre"], "nnUNetPlans_3d_fullres", "case_0000_seg.b2nd"), mode="r")[:]
    assert np.array_equal(ours, nnunet)
    pool = _open(scratch)
    assert pool.truth_identifiers == set(pool.identifiers) - {"case_0100"}
    assert pickle.load(open(os.path.join(scratch["pool"], "copy_0000.pkl"), "rb"))["class_locations"] == {}


def test_nnunet_files_untouched_and_pool_survives_nnunet_preprocess(scratch):
    before = _hash_tree(scratch["pre"])
    preprocess_unlabeled(scratch["id"], num_processes=2, verbose=False)  # spawn workers, like the CLI default
    assert _hash_tree(scratch["pre"]) == before
    pool_files = sorted(os.listdir(scratch["pool"]))
    run_cli("nnUNetv2_preprocess", "-d", scratch["id"], "-c", "3d_fullres", "-np", "1")
    assert sorted(os.listdir(scratch["pool"])) == pool_files
    assert len(_open(scratch).identifiers) == 4


def test_interrupted_run_resumes_and_half_written_cases_are_never_listed(scratch):
    with open(os.path.join(scratch["unlabeled"], "zz_broken_0000.nii.gz"), "wb") as f:
        f.write(b"this is not a nifti file")
    with pytest.raises(DinoMixError, match="zz_broken"):
        preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert not os.path.exists(os.path.join(scratch["pool"], ".staging"))
    assert len(_open(scratch).identifiers) == 4  # the good cases before the failure are kept

    # a case file without manifest entry (e.g. a crash between writes) is invisible to training
    shutil.copy(os.path.join(scratch["pool"], "case_0100.b2nd"), os.path.join(scratch["pool"], "ghost.b2nd"))
    assert "ghost" not in _open(scratch).identifiers

    os.remove(os.path.join(scratch["unlabeled"], "zz_broken_0000.nii.gz"))
    again = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert again.processed == [] and len(again.skipped) == 4

    # a replaced source image is preprocessed again, the others are not
    src = os.path.join(scratch["unlabeled"], "case_0101_0000.nii.gz")
    img = sitk.ReadImage(src)
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16) + 5, src)
    third = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert third.processed == ["case_0101"] and len(third.skipped) == 3

    # a source case that disappears stays in the pool, unless its removal is asked for
    os.remove(os.path.join(scratch["unlabeled"], "case_0102_0000.nii.gz"))
    fourth = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert fourth.removed == [] and "case_0102" in _open(scratch).identifiers
    fifth = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False, remove_missing=True)
    assert fifth.removed == ["case_0102"] and not os.path.exists(os.path.join(scratch["pool"], "case_0102.b2nd"))
    assert "case_0102" not in _open(scratch).identifiers


def test_stale_pool_is_detected_and_rebuilt(scratch):
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    plans = load_json(os.path.join(scratch["pre"], "nnUNetPlans.json"))
    _open(scratch, "nnUNetPlansTinyCPU")  # architecture-only changes share the pool
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 10  # e.g. re-planned with new cases
    with pytest.raises(DinoMixError, match="(?s)stale.*dinomix_preprocess_unlabeled"):
        _open(scratch, plans_dict=plans)
    spacing_changed = load_json(os.path.join(scratch["pre"], "nnUNetPlans.json"))
    spacing_changed["configurations"]["3d_fullres"]["spacing"] = [3.0, 2.5, 2.5]
    with pytest.raises(DinoMixError, match="stale"):
        _open(scratch, plans_dict=spacing_changed)
    from batchgenerators.utilities.file_and_folder_operations import save_json
    save_json(plans, os.path.join(scratch["pre"], "nnUNetPlans.json"))
    rebuilt = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert len(rebuilt.processed) == 4 and rebuilt.skipped == []
    _open(scratch, plans_dict=plans)


def test_missing_pool_tells_how_to_make_it(scratch):
    with pytest.raises(DinoMixError, match=f"dinomix_preprocess_unlabeled -d {scratch['id']} -c 3d_fullres"):
        _open(scratch)


def _write_image(path, shape=(24, 48, 48), spacing_xyz=(2.0, 2.0, 3.0)):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 100, shape).astype(np.int16))
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, path)


@pytest.mark.parametrize("files, message", [
    (["a_0000.nrrd"], "does not end with the dataset's file ending .nii.gz"),
    (["a.nii.gz"], "lacks the _XXXX channel suffix"),
    (["a_0001.nii.gz"], "has 1 channel"),
    ([], "holds no unlabeled images"),
])
def test_bad_file_names_are_reported_before_anything_is_written(scratch, tmp_path, files, message):
    for f in files:
        _write_image(str(tmp_path / f)) if f.endswith(".nii.gz") else (tmp_path / f).write_text("x")
    with pytest.raises(DinoMixError, match=message):
        preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False)
    assert not os.path.exists(scratch["pool"])


def test_spacing_outliers_and_2d_images_are_refused_unless_allowed(scratch, tmp_path):
    _write_image(str(tmp_path / "far_0000.nii.gz"), spacing_xyz=(0.5, 0.5, 12.0))
    with pytest.raises(DinoMixError, match="(?s)far outside the labeled cases. range.*--allow_spacing_outliers"):
        preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False)
    ok = preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False,
                              allow_spacing_outliers=True)
    assert ok.processed == ["far"]
    flat = tmp_path / "flat"
    flat.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 48), np.int16)), str(flat / "slice_0000.nii.gz"))
    with pytest.raises(DinoMixError, match="slice"):
        preprocess_unlabeled(scratch["id"], input_folder=str(flat), num_processes=1, verbose=False)
    # allowing spacing outliers does not let a 2D image through as a stack of hundreds of copied slices
    with pytest.raises(DinoMixError, match="slice.*a 2D image in a 3D dataset"):
        preprocess_unlabeled(scratch["id"], input_folder=str(flat), num_processes=1, verbose=False,
                             allow_spacing_outliers=True)


def test_a_vector_image_is_refused_as_such_not_as_a_channel_count(scratch, tmp_path):
    vector = sitk.GetImageFromArray(np.zeros((24, 48, 48, 2), np.float32), isVector=True)
    vector.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(vector, str(tmp_path / "vec_0000.nii.gz"))
    with pytest.raises(DinoMixError, match="vec_0000.nii.gz has 2 components per voxel") as refused:
        preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False)
    assert "channels" not in str(refused.value).split("components")[0]


def test_unknown_dataset_configuration_and_unplanned_dataset(scratch, capsys):
    with pytest.raises(DinoMixError, match="(?s)Configuration .3d_cascade_fullres. is not in.*Available: .*3d_fullres"):
        preprocess_unlabeled(scratch["id"], "3d_cascade_fullres", verbose=False)
    with pytest.raises(DinoMixError, match="was not found"):
        preprocess_unlabeled("987", verbose=False)
    plans_file = os.path.join(scratch["pre"], "nnUNetPlans.json")
    for broken in ('{"configurations": {"3d_fullres"', '{"plans_name": "nnUNetPlans"}', "[]"):
        with open(plans_file, "w") as f:  # cut off mid-write; another JSON file under the plans' name
            f.write(broken)
        with pytest.raises(DinoMixError, match="is not an nnU-Net plans file.*nnUNetv2_plan_and_preprocess"):
            preprocess_unlabeled(scratch["id"], verbose=False)
        checks = doctor.check_dataset(scratch["id"], "3d_fullres", "nnUNetPlans")  # dinomix_doctor says so too
        assert [c.status for c in checks] == [doctor.FAIL] and "nnUNetv2_plan_and_preprocess" in checks[0].detail
    os.remove(plans_file)
    with pytest.raises(DinoMixError, match="Run nnUNetv2_plan_and_preprocess"):
        preprocess_unlabeled(scratch["id"], verbose=False)
    # the command line prints the message and exits with 1, no traceback
    assert cli_main(["-d", scratch["id"], "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR:") and "nnUNetv2_plan_and_preprocess" in err and "Traceback" not in err


def _pool_files(s):
    return sorted(os.listdir(s["pool"]))


@pytest.mark.parametrize("length", [200, 20000])
def test_a_truncated_image_is_refused_by_name_and_the_pool_is_left_alone(scratch, tmp_path, length, capsys):
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    before = _pool_files(scratch)
    src = os.path.join(scratch["unlabeled"], "case_0100_0000.nii.gz")
    with open(src, "rb") as f:
        (tmp_path / "h_0000.nii.gz").write_bytes(f.read()[:length])
    assert cli_main(["-d", scratch["id"], "-i", str(tmp_path), "-np", "1"]) == 1
    assert "h_0000.nii.gz is truncated" in capsys.readouterr().err
    assert _pool_files(scratch) == before and len(_open(scratch).identifiers) == 4


def test_another_input_folder_adds_cases_and_removal_needs_asking_after_success(scratch, tmp_path):
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    _write_image(str(tmp_path / "extra_0000.nii.gz"))
    added = preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False)
    assert added.processed == ["extra"] and added.removed == []
    assert len(_open(scratch).identifiers) == 5  # the first folder's four cases are still there
    manifest = load_json(os.path.join(scratch["pre"], "nnUNetPlans_3d_fullres_unlabeled.json"))
    assert manifest["cases"]["extra"]["folder"] == str(tmp_path)

    # a run that fails removes nothing, even when removal was asked for
    (tmp_path / "bad_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DinoMixError, match="bad_0000"):
        preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False,
                             remove_missing=True)
    assert len(_open(scratch).identifiers) == 5
    os.remove(tmp_path / "bad_0000.nii.gz")
    kept = preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False,
                                remove_missing=True)
    assert len(kept.removed) == 4 and _open(scratch).identifiers == ["extra"]


def test_a_pool_in_use_by_a_training_gets_new_cases_but_loses_or_changes_none(scratch, tmp_path):
    from nnunet_dinomix.unlabeled.pool import IN_USE_FOLDER, acquire_lease, active_leases, release_lease
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    lease = acquire_lease(scratch["pool"])  # as a training does in on_train_start (this process is alive)
    try:
        src = os.path.join(scratch["unlabeled"], "case_0101_0000.nii.gz")
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(src), sitk.sitkInt16) + 5, src)
        with pytest.raises(DinoMixError, match="(?s)being read by a training.*preprocess 1 of its cases again"):
            preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
        with pytest.raises(DinoMixError, match="remove 4 of its cases"):
            _write_image(str(tmp_path / "extra_0000.nii.gz"))
            preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False,
                                 remove_missing=True)
        added = preprocess_unlabeled(scratch["id"], input_folder=str(tmp_path), num_processes=1, verbose=False)
        assert added.processed == ["extra"]
    finally:
        release_lease(scratch["pool"])
    assert not os.path.exists(lease)
    # a training that died without cleaning up does not block anything
    dead = os.path.join(scratch["pool"], IN_USE_FOLDER, os.path.basename(lease).rpartition("_")[0] + "_999999999")
    open(dead, "w").close()
    assert active_leases(scratch["pool"]) == [] and not os.path.exists(dead)
    assert preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False).processed == ["case_0101"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_pool_file_is_found_when_the_pool_is_opened_and_redone(scratch, damage):
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    path = os.path.join(scratch["pool"], "case_0103.b2nd")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.write(os.urandom(size))
    with pytest.raises(DinoMixError, match="(?s)case_0103.b2nd.*dinomix_preprocess_unlabeled"):
        _open(scratch)
    again = preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    assert again.processed == ["case_0103"] and len(again.skipped) == 3
    assert len(_open(scratch).identifiers) == 4


def test_a_copied_plans_file_gets_a_hint_naming_itself_and_a_rebuild_names_the_plans_it_stales(scratch, capsys):
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunet_dinomix.unlabeled.pool import plans_identifier_of
    preprocess_unlabeled(scratch["id"], num_processes=1, verbose=False)
    copy = load_json(os.path.join(scratch["pre"], "nnUNetPlans.json"))  # keeps plans_name "nnUNetPlans"
    copy["foreground_intensity_properties_per_channel"]["0"]["mean"] += 10
    save_json(copy, os.path.join(scratch["pre"], "nnUNetPlansCopy.json"), sort_keys=False)
    assert copy["plans_name"] == "nnUNetPlans" and plans_identifier_of(scratch["pre"], copy) == "nnUNetPlansCopy"
    with pytest.raises(DinoMixError, match=f"dinomix_preprocess_unlabeled -d {scratch['id']} -c 3d_fullres "
                                           f"-p nnUNetPlansCopy"):
        _open(scratch, plans="nnUNetPlansCopy", plans_dict=copy)
    capsys.readouterr()
    preprocess_unlabeled(scratch["id"], plans_identifier="nnUNetPlansCopy", num_processes=1)
    out = capsys.readouterr().out
    assert "nnUNetPlans, nnUNetPlansTinyCPU, which share(s) the data identifier" in out
    with pytest.raises(DinoMixError, match="stale"):
        _open(scratch)  # as the note said


def _children(pid):
    import subprocess
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(")")[-1].split()[0] != "Z"


def test_killing_the_command_ends_its_workers(scratch):
    import signal
    import subprocess
    import sys
    import time
    from support import bin_path
    proc = subprocess.Popen([bin_path("dinomix_preprocess_unlabeled"), "-d", scratch["id"], "-np", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = [p for p in _children(proc.pid) if "resource_tracker" not in open(f"/proc/{p}/cmdline").read()]
        time.sleep(0.2)
    assert len(workers) >= 2, "the workers did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.5)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived the killed command"

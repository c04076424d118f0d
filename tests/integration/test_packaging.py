"""A wheel (not only this editable checkout) carries the shim folder and presets, and nnU-Net finds its trainers."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), ROOT],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("nnunet_dinomix/ext_trainers/nnunet_dinomix_trainers.py", "nnunet_dinomix/plans/tiny_cpu.json",
                     "nnunet_dinomix/training/mean_teacher.py", "nnunet_dinomix/unlabeled/preprocess.py",
                     "nnunet_dinomix/training/dinomix.py", "nnunet_dinomix/pic/cutmix.py",
                     "nnunet_dinomix/fkd/distiller.py", "nnunet_dinomix/evaluation/metrics.py",
                     "nnunet_dinomix/convert/splits.py", "nnunet_dinomix/cli/preprocess_unlabeled.py"):
        assert expected in names
    assert not any(n.startswith(("tests/", "trainers/", "plans/")) for n in names)


def test_nnunet_finds_picklable_trainers_in_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import os, pickle, nnunet_dinomix, contextlib, io\n"
        f"assert nnunet_dinomix.__file__.startswith({str(site)!r}), nnunet_dinomix.__file__\n"
        "from nnunet_dinomix.discovery import trainer_dir\n"
        "os.environ['nnUNet_extTrainer'] = trainer_dir()\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cls = recursive_find_trainer_class_by_name('nnUNetTrainerMeanTeacher')\n"
        "    dinomix = recursive_find_trainer_class_by_name('nnUNetTrainerDinoMixBudget')\n"
        "assert pickle.loads(pickle.dumps(cls)) is cls and pickle.loads(pickle.dumps(dinomix)) is dinomix\n"
        "print(trainer_dir(), cls.__module__)\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("nnUNet_extTrainer", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder, module = result.stdout.split()
    assert folder == str(site / "nnunet_dinomix" / "ext_trainers")
    assert module == "nnunet_dinomix.training.mean_teacher"


def test_components_that_need_no_nnunet_do_not_import_it():
    """Teacher loading, PIC, the losses, the EMA and the metrics stay usable without nnU-Net."""
    modules = ["nnunet_dinomix.ssl.ema", "nnunet_dinomix.ssl.losses", "nnunet_dinomix.ssl.schedules",
               "nnunet_dinomix.pic.curriculum", "nnunet_dinomix.pic.cutmix", "nnunet_dinomix.fkd.teacher",
               "nnunet_dinomix.fkd.features", "nnunet_dinomix.fkd.distiller", "nnunet_dinomix.fkd.tap",
               "nnunet_dinomix.fkd.random_teacher", "nnunet_dinomix.evaluation.metrics",
               "nnunet_dinomix.convert.splits", "nnunet_dinomix.ssl.pseudo", "nnunet_dinomix.pic.mixer",
               "nnunet_dinomix.unlabeled.integrity", "nnunet_dinomix.paths", "nnunet_dinomix.errors"]
    script = ("import sys, importlib\n"
              f"for m in {modules!r}: importlib.import_module(m)\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nnunetv2', 'timm'))\n"
              "print(' '.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == ""  # neither nnU-Net nor timm (imported only when a teacher is built)


def test_library_code_never_imports_a_command_module():
    """Commands (nnunet_dinomix/cli) call the library; the library, trainers included, never calls back."""
    import ast
    package = os.path.join(ROOT, "nnunet_dinomix")
    offenders = []
    for folder, _, files in os.walk(package):
        if os.path.relpath(folder, package).split(os.sep)[0] == "cli":
            continue
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                imported = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    imported = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                if any(m == "nnunet_dinomix.cli" or m.startswith("nnunet_dinomix.cli.") for m in imported):
                    offenders.append(os.path.relpath(path, ROOT))
    assert offenders == []

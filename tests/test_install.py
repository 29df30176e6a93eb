"""prunelab as users install it: a wheel that carries its configs (``conf/`` as ``prunelab.conf``)
and a ``prunelab`` console script, runnable from any folder.

The slow test installs a copy of the repository (non-editable) into a fresh virtual environment
that borrows torch and the other dependencies from this one (``--system-site-packages``, no
downloads) and runs a tiny job from a temporary folder with ``prunelab`` and ``python -m prunelab``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself requires tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "task=sst2", "max_train_samples=32", "max_eval_samples=16", "max_length=32",
        "num_train_epochs=1", "per_device_train_batch_size=8", "progress_bar=false"]
RECIPE = "# @package _global_\nseed: 7\nmax_train_samples: 24\n"


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_pyproject_lists_every_package():
    """packages are listed by hand (conf/ is mapped to prunelab.conf): a new subpackage must be added."""
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "prunelab").rglob("__init__.py")}
    on_disk.add("prunelab.conf")
    listed = set(_setuptools()["packages"])
    assert listed == on_disk, (f"pyproject.toml [tool.setuptools] packages: add {sorted(on_disk - listed)}, "
                               f"remove {sorted(listed - on_disk)}")


def test_every_config_file_ships():
    """package-data ships *.yaml from conf/: any other kind of file there would be left out."""
    others = [path.relative_to(REPO) for path in (REPO / "conf").rglob("*")
              if path.is_file() and path.suffix != ".yaml" and path.name != "__init__.py"
              and "__pycache__" not in path.parts]
    assert others == []
    assert _setuptools()["package-dir"] == {"prunelab.conf": "conf"}


def _copy_sources(target: Path) -> Path:
    """What the build needs, copied: building in the repository would leave build/ there."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    for name in ("prunelab", "conf"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    env.pop("PYTHONPATH", None)  # the installed copy, not the source tree, must be what runs
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_installed_package_runs_from_any_folder(tmp_path, tiny_data_root):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)
    python, script = venv / "bin" / "python", venv / "bin" / "prunelab"
    # pip comes from the borrowed site-packages; --ignore-installed leaves this environment's
    # (editable) prunelab alone and installs the copy into the venv; no build isolation: no download.
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
          "--ignore-installed", str(_copy_sources(tmp_path / "src"))], tmp_path)
    assert script.is_file()

    work = tmp_path / "work"  # neither the repository nor the venv: nothing importable by accident
    work.mkdir()
    where = _run([str(python), "-c", "import importlib.resources, prunelab; "
                  "print(prunelab.__file__); print(importlib.resources.files('prunelab.conf'))"], work)
    package_file, conf_dir = where.stdout.split()
    assert Path(package_file).is_relative_to(venv) and Path(conf_dir).is_relative_to(venv), where.stdout
    assert (Path(conf_dir) / "pattern" / "2:4.yaml").is_file()

    user_conf = tmp_path / "my-conf"  # the user's own presets, beside the shipped ones
    (user_conf / "experiment").mkdir(parents=True)
    (user_conf / "experiment" / "my-recipe.yaml").write_text(RECIPE, encoding="utf-8")
    common = [*TINY, f"data_root={tiny_data_root}", "experiment=my-recipe"]
    commands = {
        "script": [str(script), "--config-dir", str(user_conf), *common],
        "module": [str(python), "-m", "prunelab", f"hydra.searchpath=[file://{user_conf}]", *common],
    }
    for name, command in commands.items():
        run_dir = tmp_path / f"run-{name}"
        _run([*command, f"hydra.run.dir={run_dir}"], work)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed", summary
        assert summary["seed"] == 7  # from the user's recipe
        hydra_cfg = (run_dir / ".hydra" / "hydra.yaml").read_text()
        assert "path: prunelab.conf\n" in hydra_cfg and "schema: pkg\n" in hydra_cfg

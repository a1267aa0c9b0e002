"""The distribution is `spectrum-snr` (PyPI's `spectrum` is an unrelated library): the wheel and the
sdist built from this checkout carry that name, and the installed wheel gives `import spectrum` and
the `spectrum` command. Built offline, from a copy of the checkout (the build writes egg-info)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT

import spectrum

SKIP = {".git", "build", "dist", "demo", ".pytest_cache", ".hypothesis", "__pycache__", "model_snr_results",
        "benchmarks", ".whl"}


def clean_env() -> dict[str, str]:
    """The environment without the checkout on PYTHONPATH, so that only what is installed is imported."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_wheel_and_sdist_are_named_spectrum_snr_and_the_wheel_runs(tmp_path):
    source = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT, source, ignore=lambda _dir, names: [n for n in names if n in SKIP
                                                                  or n.endswith(".egg-info")])
    dist = tmp_path / "dist"
    version = spectrum.__version__

    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist), "."],
        source)
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], source)
    assert sorted(p.name for p in dist.iterdir()) == [f"spectrum_snr-{version}-py3-none-any.whl",
                                                      f"spectrum_snr-{version}.tar.gz"]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         str(dist / f"spectrum_snr-{version}-py3-none-any.whl")], tmp_path)

    # The venv's own site-packages come first; an editable install in the system site (setuptools
    # appends its finder to sys.meta_path) must not win. -I keeps the working folder off sys.path.
    where = run([str(python), "-I", "-c", "import spectrum; print(spectrum.__file__)"], tmp_path).stdout.strip()
    site = run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               tmp_path).stdout.strip()
    assert Path(where).resolve() == (Path(site) / "spectrum" / "__init__.py").resolve()
    assert run([str(venv / "bin" / "spectrum"), "--version"], tmp_path).stdout == f"spectrum {version}\n"
    shown = run([str(python), "-m", "pip", "show", "spectrum-snr"], tmp_path).stdout
    assert f"Name: spectrum-snr\nVersion: {version}\n" in shown

    # scripts/setup.sh (dry run) installs only what is missing: with this copy installed editable and
    # everything else there, nothing; from another checkout, the editable install of that one.
    # The venv's own setuptools (bundled with its pip) predates license expressions: build with the system's.
    run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", "setuptools"], tmp_path)
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "-e",
         str(source)], tmp_path)
    env = {**clean_env(), "SPECTRUM_SETUP_DRY_RUN": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for checkout, wanted in ((source, []), (REPO_ROOT, ["would run: python3 -m pip install --quiet -e .[test]"])):
        proc = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        lines = [line for line in proc.stdout.splitlines()  # what depends on this machine, not on the checkout
                 if "pip uninstall --quiet -y spectrum" not in line and "apt-get install" not in line]
        assert lines == wanted, proc.stdout

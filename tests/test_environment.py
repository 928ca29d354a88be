"""Packaging: pyproject ranges, the exact pins, the wheel's assets, the notebooks' install cell.

requirements.lock is the tested set. pyproject.toml states compatible ranges whose lower bound is
the lock's version (so the metadata never claims an untested floor), environment.yml pins the
lock's versions exactly, and the wheel carries the data/ assets that litlab needs at run time.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# The first code cell of every notebook: installs litlab in Colab (or any kernel without it).
INSTALL_CELL = '''\
# Installs litlab where it is missing (Colab) and does nothing where it is installed. On a GPU, first
# set LITLAB_PIP_SPEC="litlab[cuda] @ git+https://github.com/litlab-dev/litlab" (see the README).
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("litlab") is None:
    spec = os.environ.get("LITLAB_PIP_SPEC", "litlab @ git+https://github.com/litlab-dev/litlab")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])
    importlib.invalidate_caches()
    print("Installed", spec, "- if an import below fails, restart the session and run on.")'''


def _lock() -> dict[str, Version]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): Version(str(r.specifier).removeprefix("==")) for r in pins}


def _requirements(*groups: str) -> list[Requirement]:
    """pyproject requirements: "base" is [project] dependencies, anything else an extra."""
    extras = PROJECT["optional-dependencies"]
    return [Requirement(r) for g in groups for r in (PROJECT["dependencies"] if g == "base" else extras[g])]


def _environment_pins() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s+python=3\.11\s*$", text, re.M), "environment.yml must pin python=3.11"
    pins = re.findall(r"^\s*-\s+([A-Za-z0-9_.\-\[\]]+\s*(?:[=<>!~]=|[<>]).*?)\s*(?:#.*)?$", text, re.M)
    reqs = [Requirement(p) for p in pins]
    bad = [str(r) for r in reqs if not (len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==")]
    assert not bad, f"environment.yml must pin exactly (==): {bad}"
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in reqs}


def test_pyproject_ranges_start_at_the_lock():
    lock = _lock()
    groups = ["base", *PROJECT["optional-dependencies"]]
    problems = []
    for req in _requirements(*groups):
        name, spec = canonicalize_name(req.name), req.specifier
        if name not in lock:
            problems.append(f"{req}: not in requirements.lock")
        elif not spec.contains(lock[name]):
            problems.append(f"{req}: excludes the locked {lock[name]}")
        elif {s.operator for s in spec} != {">=", "<"} or len(spec) != 2:
            problems.append(f"{req}: write it as >=locked,<next (a tested floor and a ceiling)")
        elif Version(next(s.version for s in spec if s.operator == ">=")) != lock[name]:
            problems.append(f"{req}: lower bound is not the locked {lock[name]}")
    assert not problems, "pyproject.toml drifted from requirements.lock:\n" + "\n".join(problems)


def test_environment_yml_pins_the_lock():
    lock = _lock()
    expected = {canonicalize_name(r.name): str(lock[canonicalize_name(r.name)])
                for r in _requirements("base", "test")}
    assert _environment_pins() == expected


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_requires_python_admits(python):
    assert SpecifierSet(PROJECT["requires-python"]).contains(python)


def test_cuda_extra_is_the_same_jax_with_cuda():
    assert "cuda" in PROJECT["optional-dependencies"], "pyproject.toml needs the documented cuda extra"
    (base_jax,) = [r for r in _requirements("base") if r.name == "jax"]
    (cuda_jax,) = [r for r in _requirements("cuda") if r.name == "jax"]
    assert "cuda12" in cuda_jax.extras and cuda_jax.specifier == base_jax.specifier


def test_every_notebook_starts_with_the_install_cell():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and code[0].source == INSTALL_CELL, (
            f"{path.name}: the first code cell must be exactly (no outputs needed):\n\n{INSTALL_CELL}")
        assert not code[0].outputs


def test_wheel_carries_the_assets(tmp_path):
    """Build the wheel from a copy of the tree and check a non-editable install finds data/."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("litlab", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(src), "-w", str(tmp_path / "dist")],
                   check=True, cwd=tmp_path, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("litlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assets = {f"litlab/_assets/{p.relative_to(ROOT / 'data').as_posix()}"
              for p in (ROOT / "data").rglob("*") if p.is_file()}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "litlab").rglob("*.py")}
    assert not assets - names, f"assets missing from the wheel: {sorted(assets - names)}"
    assert not modules - names, (f"modules missing from the wheel (list new subpackages in "
                                 f"pyproject.toml [tool.setuptools] packages): {sorted(modules - names)}")
    for card in ("encoder", "tokenizer", "fonts", "words"):
        assert f"litlab/_assets/{card}/CARD.md" in names

    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read("litlab-0.1.0.dist-info/METADATA").decode())
    assert SpecifierSet(metadata["Requires-Python"]) == SpecifierSet(PROJECT["requires-python"])

    # Unpacked like site-packages, away from the checkout, without site (so no editable finder).
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("from litlab.assets import asset_path; "
             "print(asset_path('encoder', 'vit_pretrained.npz')); "
             "print(asset_path('data/tokenizer/litlab_bench.model'))")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(site)}).stdout
    for line in out.splitlines():
        assert Path(line).is_file() and Path(line).is_relative_to(site / "litlab" / "_assets"), out

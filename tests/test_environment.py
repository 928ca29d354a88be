"""environment.yml (conda/Colab) must pin exactly what pyproject.toml and requirements.lock pin."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    name, version = req.split("==")
    return re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-"), version.strip()


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert all("==" in r for r in reqs), "every dependency in pyproject.toml must be pinned with =="
    return dict(map(_norm, reqs))


def _environment_pins() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    pins = re.findall(r"^\s*-\s+([A-Za-z0-9_.\-\[\]]+==[^\s#]+)", text, re.M)
    assert re.search(r"^\s*-\s+python=3\.11\s*$", text, re.M), "environment.yml must pin python=3.11"
    return dict(map(_norm, pins))


def _lock_pins() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return dict(_norm(line) for line in lines if line and not line.startswith("#"))


def test_environment_yml_matches_pyproject():
    assert _environment_pins() == _pyproject_pins()


def test_lock_agrees_with_pyproject():
    lock, pins = _lock_pins(), _pyproject_pins()
    disagree = {k: (v, lock.get(k)) for k, v in pins.items() if lock.get(k) != v}
    assert not disagree, f"requirements.lock disagrees with pyproject.toml (pin, lock): {disagree}"

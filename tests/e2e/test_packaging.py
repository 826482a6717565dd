"""The two ways to install the course list the same packages, and the commands a newcomer types exist."""

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's name
NOT_PACKAGES = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    name = name.lower().replace("_", "-")
    return CONDA_NAMES.get(name, name), spec.replace(" ", "")


def _requirements(with_dev: bool = True) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + (project["optional-dependencies"]["dev"] if with_dev else [])


def test_environment_yml_and_pyproject_list_the_same_packages():
    from_pyproject = dict(_split(r) for r in _requirements())
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    from_conda = {name: spec for name, spec in map(_split, conda) if name not in NOT_PACKAGES}
    assert from_conda == from_pyproject
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-e ."]


def test_torch_is_a_lower_bound_and_nbgrader_is_pinned():
    deps = dict(_split(r) for r in _requirements(with_dev=False))
    assert deps["torch"].startswith(">=")
    assert deps["nbgrader"].startswith("==") and deps["nbformat"].startswith("==")


def test_readme_gives_the_two_commands_and_the_makefile_has_them():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("lab", "test", "release"):
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make lab" in readme and "make test" in readme
    assert "conda env create -f environment.yml" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_nbgrader_config_points_at_solutions_and_notebooks():
    text = (REPO / "nbgrader_config.py").read_text()
    assert 'source_directory = "solutions"' in text
    assert 'release_directory = "notebooks"' in text
    assert "c.Execute.timeout = 120" in text

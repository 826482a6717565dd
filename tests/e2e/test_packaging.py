"""The ways to install the course agree, Colab gets only what the lessons need, and the commands a
newcomer types exist."""

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's name
NOT_PACKAGES = {"python", "pip"}
# Colab's own packages, which `pip install` of the course must keep (README's Colab line).
COLAB_KEEPS = {"torch": "2.11", "ipywidgets": "7.7"}
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn"}  # where they differ


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    name = name.lower().replace("_", "-")
    return CONDA_NAMES.get(name, name), spec.replace(" ", "")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _own() -> dict[str, str]:
    return dict(_split(r) for r in _project()["dependencies"])


def _extra(name: str) -> dict[str, str]:
    return dict(_split(r) for r in _project()["optional-dependencies"][name])


def _floor(spec: str) -> tuple[int, ...]:
    assert re.fullmatch(r">=[0-9.]+", spec), f"{spec!r} is not a lower bound"
    return tuple(int(part) for part in spec[2:].split("."))


def test_environment_yml_lists_the_package_and_its_lab_and_dev_extras():
    """conda gets everything; where an extra raises a bound (ipywidgets for JupyterLab 4), its bound."""
    yaml = pytest.importorskip("yaml", reason="needs pyyaml (the [dev] extra)")
    everything = {**_own(), **_extra("lab"), **_extra("dev")}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    from_conda = {name: spec for name, spec in map(_split, conda) if name not in NOT_PACKAGES}
    assert from_conda == everything
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-e ."]


def test_colab_gets_the_lessons_needs_and_keeps_its_own_torch_and_ipywidgets():
    """Does `pip install` of the course on Colab bring JupyterLab or nbgrader, or replace Colab's torch?"""
    own, lab = _own(), _extra("lab")
    assert set(own) == {"torch", "numpy", "matplotlib", "ipywidgets", "tqdm", "sacrebleu"}
    assert {"jupyterlab", "nbgrader", "nbformat", "nbclient"} <= set(lab)
    for name, colab_version in COLAB_KEEPS.items():
        floor = _floor(own[name])
        assert floor <= tuple(int(part) for part in colab_version.split(".")), (name, own[name])
    assert _floor(lab["ipywidgets"]) >= (8, 1)  # JupyterLab 4's widget manager


def _optional_imports(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `try: ... except ImportError`: optional, so never needed."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            lines |= {n.lineno for statement in node.body for n in ast.walk(statement) if hasattr(n, "lineno")}
    return lines


def test_course_lib_imports_only_its_own_dependencies():
    """What course_lib needs must be installed on Colab, where only its own dependencies are."""
    import_names = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in _own()}
    allowed = import_names | {"course_lib", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted((REPO / "course_lib").rglob("*.py")):
        tree = ast.parse(path.read_text())
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            outside = [root for root in roots if root not in allowed]
            assert not outside or node.lineno in optional, (
                f"{path.relative_to(REPO)}:{node.lineno} imports {outside}: add it to pyproject.toml's "
                "dependencies (and environment.yml), or import it under try/except ImportError"
            )


def test_triton_is_an_optional_extra_named_for_itself():
    """Triton is not a dependency (Colab's T4 and macOS run without it), only the [triton] extra."""
    assert "triton" not in _own() and "triton" not in _extra("lab") and "triton" not in _extra("dev")
    assert _floor(_extra("triton")["triton"]) >= (3, 0)
    assert "[triton]" in (REPO / "README.md").read_text()


def test_torch_is_a_lower_bound_and_nbgrader_is_pinned():
    assert _own()["torch"].startswith(">=")
    lab = _extra("lab")
    assert lab["nbgrader"] == "==0.9.6" and lab["nbformat"] == "==5.11.1"


def test_readme_gives_the_two_commands_and_the_makefile_has_them():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("lab", "test", "release"):
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert re.search(r'pip install -e "\.\[lab\]"', makefile)
    assert re.search(r'pip install -e "\.\[\$\(TEST_EXTRAS\)\]"', makefile)
    assert re.search(r"^TEST_EXTRAS := lab,dev\$\(if \$\(filter Linux,.*\$\(comma\)triton\)$", makefile, flags=re.M)
    assert "make lab" in readme and "make test" in readme
    assert "conda env create -f environment.yml" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_nbgrader_config_points_at_solutions_and_notebooks():
    text = (REPO / "nbgrader_config.py").read_text()
    assert 'source_directory = "solutions"' in text
    assert 'release_directory = "notebooks"' in text
    assert "c.Execute.timeout = 120" in text

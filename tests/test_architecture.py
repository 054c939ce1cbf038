"""The shape of the code: one installed package whose folders are its layers, imports that only run
down the layers and never in a circle, no project import hidden inside a function, short functions,
an engine that names no method, and docs/architecture.md naming exactly the modules that exist."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from largeloss.methods import registry

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "largeloss"

# Bottom to top: a module may import its own layer and the layers before it, never one after it.
LAYERS = ("utils", "data", "nn", "methods", "experiment", "engine", "reporting", "")
# "" is the package's own top level: the public API (__init__), the CLI (cli, __main__).


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""
    return LAYERS.index(folder)


def imported_modules(tree: ast.AST, modules: set[str], inside: str) -> set[str]:
    """The project modules `tree` imports (`from largeloss.data import formats` names
    largeloss.data.formats; `from largeloss.data.formats import read` names largeloss.data.formats)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{inside}: relative import (imports run one way: absolute)"
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name in modules and name != inside}


def test_every_package_folder_is_a_layer():
    folders = {path.parent.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}
    assert folders <= {layer or "." for layer in LAYERS} | {"."}, folders


def test_imports_run_down_the_layers_without_a_cycle():
    trees = package_modules()
    graph = {name: imported_modules(tree, set(trees), name) for name, tree in trees.items()}
    for name, imported in graph.items():
        for target in imported:
            if target in ("largeloss",) or name == "largeloss":
                continue  # the top-level API imports from every layer; nothing imports it
            assert layer_of(target) <= layer_of(name), f"{name} imports {target}, a layer above it"
    visiting, done = set(), set()

    def visit(name, path):
        assert name not in visiting, f"import cycle: {' -> '.join(path + [name])}"
        if name in done:
            return
        visiting.add(name)
        for imported in sorted(graph[name]):
            visit(imported, path + [name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])


def test_nothing_in_the_package_imports_its_top_level():
    trees = package_modules()
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "largeloss" and name != "largeloss.cli" \
                    and name != "largeloss.__main__":
                pytest.fail(f"{name} imports from the package's top level (import the layer's module)")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")) + sorted((REPO_ROOT / "scripts").glob("*.py"))
                         + [REPO_ROOT / "main.py"], ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_no_project_import_inside_a_function_and_no_path_edits(path):
    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("largeloss"):
                    pytest.fail(f"{path.name}: {function.name} imports {node.module} inside a function")
    assert "sys.path" not in path.read_text(), f"{path.name} edits sys.path"


def test_tests_do_not_edit_sys_path():
    edits = re.compile(r"sys\.path\.(insert|append)\(")
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        assert not edits.search(path.read_text()) or path.name == "test_architecture.py", path


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_functions_are_short(path):
    """At most 60 lines a function (the argument parser, one flat list of flags, excepted)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "build_parser":
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}:{node.lineno} {node.name} has {length} lines"


# The modules that run any method: they call the method object and never ask which one it is.
# (experiment/ holds the papers' defaults per method, a table, not a check.)
ENGINE_FOLDERS = ("utils", "data", "nn", "engine")


@pytest.mark.parametrize("path", [path for folder in ENGINE_FOLDERS for path in sorted((PACKAGE / folder).glob("*.py"))]
                         + [PACKAGE / "cli.py"], ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_the_engine_names_no_method(path):
    source = path.read_text()
    for name in registry.METHODS:
        assert not re.search(rf"""["']{re.escape(name)}["']""", source), (path.name, name)


def installed_distribution() -> importlib.metadata.Distribution:
    """The installed `largeloss` (site-packages), not the egg-info a build leaves in the checkout."""
    site = sysconfig.get_paths()["purelib"]
    found = [dist for dist in importlib.metadata.distributions(path=[site]) if dist.metadata["Name"] == "largeloss"]
    assert len(found) == 1, f"largeloss installed {len(found)} times in {site} (make venv installs it)"
    return found[0]


def test_the_installed_distribution_has_one_top_level_name():
    """pip installs the package `largeloss` and nothing generic (`datasets`, `config`, `scripts`):
    the names it declares, the files it put in site-packages and what an editable install maps."""
    distribution = installed_distribution()
    assert distribution.read_text("top_level.txt").split() == ["largeloss"]
    placed = {file.parts[0].removesuffix(".py") for file in distribution.files
              if file.parts[0] not in ("..", "__pycache__") and not file.parts[0].endswith(".dist-info")
              and not file.parts[0].startswith("__editable__")}
    mapped = set()
    for file in distribution.files:
        if file.name.startswith("__editable___") and file.name.endswith("_finder.py"):
            text = Path(file.locate()).read_text()
            mapped |= set(ast.literal_eval(re.search(r"MAPPING: dict\[str, str\] = (\{.*?\})", text, re.S).group(1)))
    assert placed | mapped == {"largeloss"}, placed | mapped
    console = {entry.name: entry.value for entry in distribution.entry_points if entry.group == "console_scripts"}
    assert console == {"largeloss": "largeloss.cli:main"}


def test_the_architecture_page_names_every_module():
    page = (REPO_ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(largeloss/[\w/]+\.py)`", page))
    present = {path.relative_to(REPO_ROOT).as_posix() for path in PACKAGE.rglob("*.py")
               if path.name != "__init__.py" or path.parent == PACKAGE}
    assert named == present, {"named, missing": sorted(named - present), "present, unnamed": sorted(present - named)}


def shipped_text_files() -> list[Path]:
    """The repository's code and documentation: what a user who clones it reads."""
    roots = [PACKAGE, REPO_ROOT / "scripts", REPO_ROOT / "tests", REPO_ROOT / "docs"]
    files = [path for root in roots for path in root.rglob("*") if path.suffix in (".py", ".md", ".sh")]
    return files + [REPO_ROOT / name for name in ("README.md", "main.py", "Makefile", "pyproject.toml")]


def test_the_repository_stands_alone():
    """A user clones the repository without the team's design notes: nothing may send them to a
    SPEC file or to the folder beside the checkout (the offline weights of tests/test_models.py are
    an optional skip, named by path only there)."""
    private = re.compile(r"SPEC(_PEERS|_VLP)?\.md|SPEC_(PEERS|VLP)\b|STYLE\.md")
    found = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in shipped_text_files()
             if path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if private.search(line)]
    assert not found, found


def test_generic_modules_first_on_the_path_change_nothing(tmp_path):
    """A researcher's own `config.py` and Hugging Face's `datasets` come first on the path: the
    package's modules are reached only as largeloss.*, so main.py and the scripts still run."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("raise ImportError('the fake datasets package was imported')\n")
    (tmp_path / "config.py").write_text("raise ImportError('the user config.py was imported')\n")
    (tmp_path / "train.py").write_text("raise ImportError('the user train.py was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import config"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert "the user config.py was imported" in probe.stderr  # the fakes are first on the path
    run = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "--dataset", "digits",
                          "--digits_train_size", "32", "--epochs", "1", "--num_workers", "0",
                          "--device", "cpu", "--out_dir", str(tmp_path / "run")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()
    summary = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "summarize.py"), str(tmp_path)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr[-2000:]
    assert "digits" in summary.stdout
    module = subprocess.run([sys.executable, "-m", "largeloss", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and "--mod_scheme" in module.stdout, module.stderr[-2000:]

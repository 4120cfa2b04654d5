"""Every third-party module the product imports is a declared runtime dependency.

`make test` installs `.[dev]`, so a module that only arrives through a dev dependency (xxhash came in
with `datasets`) passes every test and then fails on a cluster node installed with plain `pip install`.
"""
import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "tokenizer_training", "mixing", "model")
# Imported only behind a check that it is there, and documented as optional.
OPTIONAL = {"flash_attn": "the `gpu` extra", "cudnn": "nvidia-cudnn-frontend, docs/model.md"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, over the product's packages (function-level
    imports included)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def declared_runtime() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    return {_norm(Requirement(spec).name) for spec in project["dependencies"]}


def test_every_third_party_import_is_a_runtime_dependency():
    distributions = importlib.metadata.packages_distributions()
    declared = declared_runtime()
    undeclared = []
    for module, where in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module in OPTIONAL:
            continue
        providers = {_norm(d) for d in distributions.get(module, [])}
        assert providers, f"{module} (imported in {where}) is not installed"
        if not providers & declared:
            undeclared.append(f"{module} ({where}; from {', '.join(sorted(providers))})")
    assert not undeclared, f"imported but not in [project] dependencies: {'; '.join(undeclared)}"


def test_the_scan_sees_function_level_imports():
    # fsspec is imported only inside functions; a scan of module-level imports would miss it.
    assert imported_modules()["fsspec"].startswith("pipeline/")

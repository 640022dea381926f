"""The layering rules of docs/architecture.md, checked by reading the imports of every module.

Each top-level folder is one distribution and one layer (``<folder>/src/vitcodec/<folder>``; ``common/`` holds the
shared modules of the ``vitcodec`` namespace itself). A layer may import only the layers the table allows, and
the torch-free layers may not import the training stack at all, not even lazily inside a function. The server
must not reach compressai through any chain of our own imports (the training stack stays out of a serving
install). The checker is tested on a small synthetic tree first, so a rule that could never fire would fail here
too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = frozenset({"torch", "torchvision", "timm", "compressai"})


@dataclass(frozen=True)
class Layer:
    may_import: frozenset[str]  # layers of ours, itself included
    forbidden: frozenset[str] = frozenset()  # third-party top-level packages never imported, even lazily
    never_reaches: frozenset[str] = frozenset()  # third-party packages no chain of our imports may lead to


def _layer(*may_import: str, forbidden: Iterable[str] = (), never_reaches: Iterable[str] = ()) -> Layer:
    return Layer(frozenset(may_import) | {"vitcodec"}, frozenset(forbidden), frozenset(never_reaches))


# The table of docs/architecture.md ("Who may import whom"). Every layer may also import the root package
# `vitcodec` (vitcodec/: results, console, outputs, ort_session), which itself imports nothing else of ours.
RULES: dict[str, Layer] = {
    "vitcodec": _layer(forbidden=TRAINING_STACK),
    "vitcodec.codec": _layer("vitcodec.codec", forbidden=TRAINING_STACK),
    "vitcodec.packages": _layer("vitcodec.packages", forbidden=TRAINING_STACK),
    "vitcodec.protos": _layer("vitcodec.protos", forbidden=TRAINING_STACK),
    "vitcodec.edge": _layer("vitcodec.edge", "vitcodec.codec", "vitcodec.packages", "vitcodec.protos",
                            forbidden=TRAINING_STACK),
    "vitcodec.models": _layer("vitcodec.models", "vitcodec.codec", "vitcodec.packages", "vitcodec.edge"),
    "vitcodec.cloud": _layer("vitcodec.cloud", "vitcodec.codec", "vitcodec.packages", "vitcodec.models",
                             "vitcodec.protos", never_reaches={"compressai"}),
    "vitcodec.demo": _layer("vitcodec.demo", "vitcodec.packages", "vitcodec.cloud", forbidden=TRAINING_STACK),
}


# --- reading the tree ---------------------------------------------------------------------------------


def distributions(root: Path) -> list[Path]:
    """The folders that are distributions: a pyproject.toml whose setuptools finds packages under src/."""
    found = []
    for config in sorted(root.glob("*/pyproject.toml")):
        find = tomllib.loads(config.read_text()).get("tool", {}).get("setuptools", {}).get("packages", {})
        if isinstance(find, dict) and find.get("find", {}).get("where") == ["src"]:
            found.append(config.parent)
    return found


def package_dirs(root: Path) -> dict[str, Path]:
    """Import name -> folder, for every package of every distribution (`vitcodec` itself is the namespace
    portion holding the shared modules; only one distribution may put modules there)."""
    dirs: dict[str, Path] = {}
    for dist in distributions(root):
        namespace = dist / "src" / "vitcodec"
        if (namespace / "__init__.py").exists():
            raise AssertionError(f"{namespace}/__init__.py would end the shared namespace at {dist.name}")
        if any(namespace.glob("*.py")):
            if "vitcodec" in dirs:
                raise AssertionError(f"two distributions put modules in the namespace: {dirs['vitcodec']}, {namespace}")
            dirs["vitcodec"] = namespace
        for init in sorted(namespace.rglob("__init__.py")):
            name = ".".join(("vitcodec", *init.parent.relative_to(namespace).parts))
            if name in dirs:
                raise AssertionError(f"{name} is in two distributions: {dirs[name]}, {init.parent}")
            dirs[name] = init.parent
    return dirs


def iter_modules(dirs: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    """(module name, file) for every .py file of every package; a folder of modules without __init__.py below
    a package would be installed as a namespace nobody declared, so it is an error."""
    packaged = {folder.resolve() for folder in dirs.values()}
    for name, folder in dirs.items():
        for path in sorted(folder.glob("*.py")):
            module = name if path.stem == "__init__" else f"{name}.{path.stem}"
            yield module, path
        if name == "vitcodec":
            continue
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py"))):
            if sub.resolve() not in packaged:
                raise AssertionError(f"{sub} holds modules but no __init__.py")


def imports_of(module: str, path: Path) -> set[str]:
    """Every module name `path` imports, at top level or inside functions, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.stem == "__init__"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def layer_of(module: str) -> str | None:
    """The longest rule prefix of `module` ("vitcodec.cloud.rest.app" -> "vitcodec.cloud")."""
    best = None
    for name in RULES:
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best


def violations(root: Path) -> list[str]:
    modules = dict(iter_modules(package_dirs(root)))
    graph = {module: imports_of(module, path) for module, path in modules.items()}
    found = []
    for module, imported in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            found.append(f"{module}: in no layer of the rules table")
            continue
        rule = RULES[layer]
        for name in sorted(imported):
            top = name.split(".")[0]
            if top == "vitcodec":
                target = layer_of(name)
                if target is not None and target not in rule.may_import:
                    found.append(f"{module} imports {name}: {layer} may not import {target}")
            elif top in rule.forbidden:
                found.append(f"{module} imports {name}: {layer} never imports {top}")
        for package in sorted(rule.never_reaches):
            chain = _chain_to(module, package, graph)
            if chain:
                found.append(f"{module} reaches {package}: {' -> '.join(chain)}")
    return found


def _chain_to(start: str, package: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A chain of our imports from `start` to a module that imports `package`, or None (breadth first)."""
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for name in graph.get(module, ()):
            if name.split(".")[0] == package:
                chain, node = [name], module
                while node is not None:
                    chain.append(node)
                    node = parents[node]
                return chain[::-1]
            if name in graph and name not in parents:
                parents[name] = module
                queue.append(name)
    return None


# --- the tests ----------------------------------------------------------------------------------------


def test_every_module_follows_the_import_rules() -> None:
    assert violations(ROOT) == []


def test_every_package_has_a_rule() -> None:
    for name in package_dirs(ROOT):
        assert layer_of(name) is not None, f"{name} is a package of a distribution but has no layer rule"


def test_the_edge_agent_is_edge_and_only_the_cli_imports_it() -> None:
    """edge/agent/ follows the edge's rules (no torch, on the device); of the rest of edge/ only the CLI uses
    it, and the agent never imports the CLI back (docs/architecture.md)."""
    modules = dict(iter_modules(package_dirs(ROOT)))
    agent = sorted(m for m in modules if m.startswith("vitcodec.edge.agent."))
    assert "vitcodec.edge.agent.runner" in agent and all(layer_of(m) == "vitcodec.edge" for m in agent)
    users = sorted(m for m, path in modules.items()
                   if m.startswith("vitcodec.edge.") and not m.startswith("vitcodec.edge.agent")
                   and any(name.startswith("vitcodec.edge.agent") for name in imports_of(m, path)))
    assert users == ["vitcodec.edge.cli"]
    for module in agent:
        assert "vitcodec.edge.cli" not in imports_of(module, modules[module]), module


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for folder in ("common", "codec", "edge", "cloud", "models"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pyproject.toml").write_text('[tool.setuptools.packages.find]\nwhere = ["src"]\n')
        package = tmp_path / folder / "src" / "vitcodec"
        if folder == "common":
            package.mkdir(parents=True)
            (package / "results.py").write_text("")
        else:
            (package / folder).mkdir(parents=True)
            (package / folder / "__init__.py").write_text("")
    for rel, text in files.items():
        folder, name = rel.split("/", 1)
        (tmp_path / folder / "src" / "vitcodec" / folder / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"codec/bad.py": "from vitcodec.models import jcc\n"}, "vitcodec.codec may not import vitcodec.models"),
        ({"codec/bad.py": "from ..edge import cli\n"}, "vitcodec.codec may not import vitcodec.edge"),
        ({"edge/bad.py": "def f():\n    import torch\n"}, "vitcodec.edge never imports torch"),
        ({"codec/bad.py": "import compressai.ans\n"}, "vitcodec.codec never imports compressai"),
        ({"models/train.py": "import compressai\n", "models/net.py": "from . import train\n",
          "cloud/server.py": "def load():\n    from vitcodec.models import net\n"},
         "vitcodec.cloud.server reaches compressai: vitcodec.cloud.server -> vitcodec.models.net -> "
         "vitcodec.models.train -> compressai"),
    ],
)
def test_the_checker_catches_a_broken_rule(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    found = violations(_fake_tree(tmp_path, files))
    assert any(expected in line for line in found), found


def test_the_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    clean = {"edge/ok.py": "import numpy\nfrom vitcodec.codec import bitstream\nfrom . import ok\n",
             "models/ok.py": "import torch\nfrom vitcodec.edge import ok\n"}
    assert violations(_fake_tree(tmp_path, clean)) == []


if __name__ == "__main__":  # a quick listing while reorganising
    print("\n".join(violations(ROOT)) or "no violations")
    sys.exit(0)

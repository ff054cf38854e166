"""The layer table of the design brief (shared/design.md, "Layers"), held on the import graph.

Each package may use the ones below it and must know nothing of the ones that drive it:
a protocol core that imports the runtime cannot be tested alone, and a slirp that imports
WireGuard could not be reused behind another tunnel. The graph is read from the source with
`ast`, not by importing, so a function-level import (the usual way a violation hides) counts
as much as one at the top, and nothing needs to be importable for the check to run. A second
check imports the lower layers in a fresh interpreter and looks at what came along.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "wgslirp"

# (layer, layers it must not import, why): the "knows nothing of" column as imports.
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "wgslirp.net",
        ("wgslirp.wireguard", "wgslirp.slirp", "wgslirp.runtime", "wgslirp.config"),
        "packet formats and prefix tables serve every layer above them",
    ),
    (
        "wgslirp.slirp",
        ("wgslirp.wireguard", "wgslirp.runtime"),
        "the slirp cores and bridges know neither the tunnel nor the loop that drives them",
    ),
    (
        "wgslirp.wireguard",
        ("wgslirp.slirp", "wgslirp.runtime"),
        "the WireGuard device knows nothing of IP payloads or processes",
    ),
    (
        "wgslirp.router",
        ("wgslirp.wireguard", "wgslirp.slirp", "wgslirp.runtime"),
        "forwarding decisions are generic over the peer and leave the I/O to ingress",
    ),
    (
        "wgslirp.shm",
        ("wgslirp.net", "wgslirp.wireguard", "wgslirp.slirp", "wgslirp.runtime"),
        "rings and shared counters carry bytes, not protocols",
    ),
    (
        "wgslirp.onboard",
        ("wgslirp.runtime", "wgslirp.slirp", "wgslirp.shm", "wgslirp.router", "wgslirp.wireguard"),
        "peer commands are a client of the running router: its wg(8) socket, not its internals",
    ),
    (
        "wgslirp.obs",
        ("wgslirp.runtime", "wgslirp.wireguard", "wgslirp.slirp"),
        "observability reads what the processes publish, not their hot-path internals",
    ),
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    """Does `name` (wgslirp.x.y) name a module or package of the tree at `root`?"""
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool, root: Path) -> Iterator[tuple[int, str]]:
    """(line, imported wgslirp module) for every import in `source`, wherever it is:
    top level, in a function, under `if TYPE_CHECKING`, relative, or importlib by name."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from wgslirp import runtime` imports the package wgslirp.runtime
                yield node.lineno, sub if _is_module(sub, root) else target
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path) -> list[str]:
    """Every import in the tree at `root` that breaks a rule, as `file:line: a -> b (why)`."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for layer, forbidden, why in RULES:
            if not _within(module, layer):
                continue
            source = path.read_text(encoding="utf-8")
            seen = sorted(set(imports_of(source, module, path.name == "__init__.py", root)))
            for line, target in seen:
                for other in forbidden:
                    if _within(target, other):
                        rel = path.relative_to(root.parent)
                        found.append(f"{rel}:{line}: {module} imports {target} ({why})")
    return found


def test_the_import_graph_follows_the_layer_table() -> None:
    found = violations(PACKAGE)
    assert not found, "layer violations:\n" + "\n".join(found)


def test_every_layer_of_the_rules_exists() -> None:
    """A renamed package must not turn its rule into one that checks nothing."""
    for layer, _, _ in RULES:
        assert _is_module(layer, PACKAGE), layer


@pytest.mark.parametrize(
    "source",
    [
        "from wgslirp.runtime.loop import Loop\n",
        "import wgslirp.runtime.loop as L\n",
        "from wgslirp import runtime\n",
        "from ..runtime import loop\n",
        "from ..runtime.loop import Loop\n",
        "def f() -> None:\n    from wgslirp.runtime import loop\n",
        "if TYPE_CHECKING:\n    from wgslirp.runtime import loop\n",
        "import importlib\nimportlib.import_module('wgslirp.runtime.loop')\n",
    ],
    ids=[
        "from",
        "import-as",
        "from-package",
        "relative",
        "relative-from",
        "in-function",
        "type-checking",
        "importlib",
    ],
)
def test_the_walker_sees_every_form_of_import(source: str) -> None:
    """The graph check is only as good as its parser: each way of writing an import of
    the runtime from a slirp module is caught."""
    found = {t for _, t in imports_of(source, "wgslirp.slirp.x", False, PACKAGE)}
    assert any(_within(t, "wgslirp.runtime") for t in found), found


def _loaded_by(packages: list[str]) -> set[str]:
    """The wgslirp modules a fresh interpreter holds after importing every module of
    `packages` from this tree (not an installed copy)."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {packages!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "import wgslirp\n"
        "print(wgslirp.__file__)\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('wgslirp')))\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    origin, *loaded = r.stdout.split()
    assert Path(origin).resolve().is_relative_to(PACKAGE), origin
    return set(loaded)


@pytest.mark.parametrize(
    ("packages", "forbidden"),
    [
        (["wgslirp.net"], ("wgslirp.wireguard", "wgslirp.slirp", "wgslirp.runtime")),
        (["wgslirp.slirp", "wgslirp.net"], ("wgslirp.wireguard", "wgslirp.runtime")),
        (["wgslirp.wireguard"], ("wgslirp.slirp", "wgslirp.runtime")),
        (["wgslirp.shm"], ("wgslirp.net", "wgslirp.wireguard", "wgslirp.slirp", "wgslirp.runtime")),
        (["wgslirp.obs"], ("wgslirp.runtime",)),
    ],
    ids=["net", "slirp", "wireguard", "shm", "obs"],
)
def test_a_lower_layer_imports_alone(packages: list[str], forbidden: tuple[str, ...]) -> None:
    """Importing a layer (every module of it) must not drag in a layer above it."""
    loaded = _loaded_by(packages)
    assert set(packages) <= loaded, loaded  # the probe really imported the layer
    dragged = sorted(m for m in loaded for p in forbidden if _within(m, p))
    assert dragged == [], f"importing {packages} loaded {dragged}"

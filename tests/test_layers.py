"""
The import rule of the package (docs/architecture.rst), read from the source
with C{ast}: transports know no dialect; dialects know no transport beyond the
frame-sink interface; the hub knows neither; nothing imports C{tap}; and no
two modules import each other, directly or around a cycle.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import signaling

PACKAGE = Path(signaling.__file__).resolve().parent

#: The one dialect module a transport may import: the interfaces between
#: the two (IFrameSink, IEngineIOSession, IEngineIOHandler), HandshakeInfo,
#: the close codes and the Session base class the WebSocket binding drives.
DIALECT_INTERFACES = "signaling.dialects.base"

#: What the hub may not import: everything that is not the hub's edge.
ABOVE_THE_HUB = (
    "signaling.web",
    "signaling.tap",
    "signaling.transports",
    "signaling.dialects",
    "signaling.cluster",
)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports_of(
    source: str, name: str, is_package: bool, modules: set[str]
) -> list[tuple[str, bool]]:
    """
    The modules of C{modules} that module C{name} imports, each with whether
    the import runs at module level (not inside a function or class).

    C{from package import name} counts as importing C{package.name} when
    that is a module, else C{package}.
    """
    tree = ast.parse(source)
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = not top or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, top))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[: len(here) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    submodule = target + "." + alias.name
                    found.append((submodule if submodule in modules else target, top))
            visit(child, top and not nested)

    visit(tree, True)
    return [(target, top) for target, top in found if target in modules]


def import_graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, bool]]]:
    """
    Every module of the package under C{root}, with the package's modules it
    imports.
    """
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(paths)
    return {
        name: imports_of(
            path.read_text("utf-8"), name, path.name == "__init__.py", modules
        )
        for name, path in paths.items()
    }


def layer_violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    """
    Each import that breaks the rule, as C{"importer -> imported"}.
    """
    broken = []
    for importer, targets in graph.items():
        for target, _ in targets:
            if within(importer, "signaling.dialects") and within(
                target, "signaling.transports"
            ):
                broken.append(f"{importer} -> {target}: a dialect imports a transport")
            if (
                within(importer, "signaling.transports")
                and within(target, "signaling.dialects")
                and target not in ("signaling.dialects", DIALECT_INTERFACES)
            ):
                broken.append(f"{importer} -> {target}: a transport imports a dialect")
            if importer == "signaling.hub" and any(
                within(target, above) for above in ABOVE_THE_HUB
            ):
                broken.append(
                    f"{importer} -> {target}: the hub imports what stands on it"
                )
            if target == "signaling.tap":
                broken.append(f"{importer} -> {target}: nothing imports tap")
    return broken


def cycles(graph: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """
    The cycles of module-level imports, each as the list of its modules.
    """
    edges = {
        name: sorted({target for target, top in targets if top and target != name})
        for name, targets in graph.items()
    }
    found: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in edges.get(name, ()):
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)
    return found


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.graph = import_graph()

    def test_reads_the_package(self):
        """
        The graph has every layer, and sees the imports that are allowed.
        """
        self.assertIn("signaling.hub", self.graph)
        self.assertIn("signaling.transports.websocket", self.graph)
        self.assertIn("signaling.dialects.socketio.socketio", self.graph)
        self.assertIn(
            ("signaling.dialects.base", True),
            self.graph["signaling.transports.websocket"],
        )
        self.assertIn(("signaling.hub", True), self.graph["signaling.dialects.native"])

    def test_layers(self):
        """
        No dialect imports a transport, no transport a dialect module (only
        the interfaces in dialects.base), the hub neither nor web, tap or
        cluster, and nothing imports tap.
        """
        self.assertEqual(layer_violations(self.graph), [])

    def test_no_cycles(self):
        """
        No module-level import cycle among the package's modules.
        """
        self.assertEqual(cycles(self.graph), [])


class CheckerTests(SynchronousTestCase):
    """
    The checks find what they look for, in a package written for them.
    """

    def package(self, files: dict[str, str]) -> Path:
        temporary = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, temporary)
        root = temporary / "signaling"
        for relative, source in {"__init__.py": "", **files}.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, "utf-8")
        return root

    def test_finds_each_bad_import(self):
        root = self.package(
            {
                "hub.py": "from .dialects import native\n",
                "tap.py": "",
                "dialects/__init__.py": "",
                "dialects/base.py": "",
                "dialects/native.py": "from ..transports.websocket import SignalingFactory\n",
                "transports/__init__.py": "",
                "transports/websocket.py": (
                    "from ..dialects.base import IFrameSink\n"
                    "def later():\n"
                    "    from ..dialects import native\n"
                    "    from signaling import tap\n"
                ),
            }
        )
        self.assertEqual(
            sorted(layer_violations(import_graph(root))),
            [
                "signaling.dialects.native -> signaling.transports.websocket: a dialect imports a transport",
                "signaling.hub -> signaling.dialects.native: the hub imports what stands on it",
                "signaling.transports.websocket -> signaling.dialects.native: a transport imports a dialect",
                "signaling.transports.websocket -> signaling.tap: nothing imports tap",
            ],
        )

    def test_finds_a_cycle(self):
        root = self.package(
            {
                "a.py": "from . import b\n",
                "b.py": "from .c import thing\n",
                "c.py": "import signaling.a\ndef late():\n    from . import b\n",
            }
        )
        self.assertEqual(
            cycles(import_graph(root)),
            [["signaling.a", "signaling.b", "signaling.c", "signaling.a"]],
        )

    def test_an_import_inside_a_function_is_no_cycle(self):
        root = self.package(
            {"a.py": "from . import b\n", "b.py": "def late():\n    from . import a\n"}
        )
        self.assertEqual(cycles(import_graph(root)), [])

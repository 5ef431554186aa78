"""The project's structure holds: no import circles, the dependency rules of the package
docstrings, one module per registered backend, and a backend added by one module plus one
registry line is offered everywhere backends are listed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from torch import nn

from harness import backends
from harness.artifacts.checks import VerifiedArtifact
from harness.backends import BACKEND_MODULES, Backend, backend_names, get_backend
from harness.cli import build_parser
from harness.errors import HarnessError
from harness.track.spec import TrackSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "reference_methods", "leaderboard")
ROOTS = ("harness", "reference_methods")
"""Root packages whose sub-packages are the layers."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere: at module level, inside functions and under
    ``TYPE_CHECKING`` alike (a type-only import is a dependency too); ``from package import
    submodule`` counts as importing the submodule."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known and module != name}


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the circle it closes."""
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return cycles


def test_no_import_circles_among_the_projects_modules(import_graph):
    assert _cycles(import_graph) == []


# ---- layers: the rules are the "Depends on:" paragraphs of the package docstrings ----

DEPENDS_ON = re.compile(r"^Depends on:(.*?)(?:\n\s*\n|\Z)", re.S | re.M)
EVERY_PACKAGE_MAY_IMPORT = re.compile(r"^Every package may import:(.*?)(?:\n\s*\n|\Z)", re.S | re.M)
NAMED = re.compile(r"``([a-z_][a-z0-9_.]*)``")


def _layer_of(module: str, layers: set[str]) -> str:
    """The layer a module belongs to: the longest layer name that is it or a prefix of it."""
    matches = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len)


def _layers() -> dict[str, Path]:
    """Layer name → the file whose docstring declares it: each sub-package of ``harness`` and
    ``reference_methods``, each top-level module of ``harness``, and ``leaderboard`` as one."""
    layers = {"leaderboard": ROOT / "leaderboard" / "__init__.py"}
    for top in ("harness", "reference_methods"):
        for path in sorted((ROOT / top).iterdir()):
            if (path / "__init__.py").is_file():
                layers[f"{top}.{path.name}"] = path / "__init__.py"
            elif top == "harness" and path.suffix == ".py" and path.stem != "__init__":
                layers[f"{top}.{path.stem}"] = path
    return layers


def _declared(path: Path, pattern: re.Pattern = DEPENDS_ON) -> tuple[str, ...] | None:
    """The modules or packages named (``like.this``) in the docstring paragraph ``pattern``
    finds; None when the docstring has no such paragraph."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    found = pattern.search(doc)
    return None if found is None else tuple(NAMED.findall(found.group(1)))


@pytest.fixture(scope="module")
def layer_rules() -> dict[str, tuple[str, ...]]:
    return {name: _declared(path) for name, path in _layers().items()}


def _layer_violations(import_graph, rules) -> list[str]:
    shared = _declared(ROOT / "harness" / "__init__.py", EVERY_PACKAGE_MAY_IMPORT) or ()
    layers = set(rules) | set(ROOTS)
    found = []
    for module, targets in import_graph.items():
        layer = _layer_of(module, layers)
        if layer in ROOTS:
            continue  # a root package's own __init__: the version, the package docstring
        allowed = (*(rules[layer] or ()), *shared)
        for target in sorted(targets):
            other = _layer_of(target, layers)
            if other == layer or target in ROOTS:  # a root's __init__: the version only
                continue
            if not any(target == a or target.startswith(a + ".") or other == a for a in allowed):
                found.append(f"{module} imports {target} ({layer} may import: {allowed})")
    return found


def test_every_layer_declares_what_it_may_import(layer_rules):
    assert [name for name, rule in layer_rules.items() if rule is None] == []


def test_every_import_keeps_to_the_layers_its_docstring_names(import_graph, layer_rules):
    assert _layer_violations(import_graph, layer_rules) == []


def test_no_import_circles_among_the_layers(import_graph, layer_rules):
    layers = set(layer_rules) | set(ROOTS)
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph.items():
        source = _layer_of(module, layers)
        graph.setdefault(source, set()).update(
            other for other in (_layer_of(t, layers) for t in targets) if other != source
        )
    assert _cycles(graph) == []


def test_leaderboard_mentions_nothing_of_reference_methods():
    found = subprocess.run(
        ["git", "grep", "-n", "reference_methods", "--", "leaderboard/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.stdout == ""


def test_backends_package_holds_one_module_per_registered_backend():
    files = {p.stem for p in (ROOT / "harness" / "backends").glob("*.py")} - {"__init__", "base"}
    registered = {module.rsplit(".", 1)[1] for module in BACKEND_MODULES.values()}
    assert files == registered
    for name in backend_names():
        backend = get_backend(name)
        assert backend.name == name and backend.artifact_kinds and backend.queue


def test_an_unknown_backend_is_refused_with_the_known_ones():
    with pytest.raises(HarnessError, match="unknown backend 'abacus' .*simulated"):
        TrackSpec(model_dir=Path("m"), dataset_dir=Path("d"), backend="abacus")


class ToyBackend(Backend):
    """Scores quantized checkpoints exactly like the simulator, under another name."""

    name = "toy-cpu"
    label = "toy backend"
    queue = "toys"

    def verify(self, artifact, checks) -> VerifiedArtifact:
        return get_backend("simulated").verify(artifact, checks)

    def load(self, verified, checks) -> nn.Module:
        return get_backend("simulated").load(verified, checks)


@pytest.fixture
def toy_backend(monkeypatch):
    """A backend registered the way a new one is: a module with ``BACKEND`` and one registry
    line."""
    module = types.ModuleType("toy_backend_module")
    ToyBackend.artifact_kinds = get_backend("simulated").artifact_kinds
    module.BACKEND = ToyBackend()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(BACKEND_MODULES, ToyBackend.name, module.__name__)
    yield module.BACKEND
    backends._load.cache_clear()


def test_a_registered_toy_backend_is_offered_by_the_cli_and_accepted_by_trackspec(
    toy_backend, tiny_track, tmp_path, capsys
):
    spec = TrackSpec(model_dir=Path("m"), dataset_dir=Path("d"), backend="toy-cpu")
    assert get_backend(spec.backend) is toy_backend
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    assert "toy-cpu" in capsys.readouterr().out

    from harness.cli import main

    dataset, model = tiny_track
    common = ["--dataset", str(dataset), "--model", str(model), "--quiet"]
    ckpt = tmp_path / "ckpt"
    assert main(["quantize", *common, "--method", "rtn", "--wbits", "8", "--out", str(ckpt)]) == 0
    out = tmp_path / "r.json"
    args = ["--backend", "toy-cpu", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main(["evaluate", *common, *args]) == 0
    assert '"backend": "toy-cpu"' in out.read_text()


@pytest.mark.django_db
def test_a_registered_toy_backend_needs_no_migration_and_routes_to_its_queue(toy_backend):
    from django.core.management import call_command

    from leaderboard.tracks.models import Track, backend_choices

    assert ("toy-cpu", "toy backend") in backend_choices()
    assert Track(backend="toy-cpu").queue == "toys"
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits 1 on a change

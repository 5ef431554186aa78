"""The project's structure holds: no import circles, the dependency rules of the package
docstrings, one module per registered backend, and a backend added by one module plus one
registry line is offered everywhere backends are listed."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

from harness import backends
from harness.backends import BACKEND_MODULES, Backend, OpenedArtifact, backend_names, get_backend
from harness.cli import build_parser
from harness.errors import HarnessError
from harness.track.spec import TrackSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "reference_methods", "leaderboard")


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


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere (functions included, ``TYPE_CHECKING`` blocks
    excluded); ``from package import submodule`` counts as importing the submodule."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
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
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {module for module in found if module in known and module != name}


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def test_no_import_circles_among_the_projects_modules(import_graph):
    cycles, state = [], {}

    def walk(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(import_graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target, [*stack, target])
        state[module] = "done"

    for module in sorted(import_graph):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def _violations(import_graph, source: str, forbidden: tuple[str, ...], allowed=()) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in import_graph.items()
        if module == source or module.startswith(source + ".")
        for target in targets
        if target.startswith(forbidden) and not target.startswith(allowed)
    )


@pytest.mark.parametrize(
    ("source", "forbidden", "allowed"),
    [
        ("leaderboard", ("reference_methods",), ()),
        ("harness", ("leaderboard",), ()),
        ("reference_methods", ("harness", "leaderboard"), ()),
        ("harness.scoring", ("reference_methods",), ("reference_methods.simulator",)),
        ("harness.artifacts", ("reference_methods",), ("reference_methods.simulator",)),
        ("harness.backends", ("reference_methods",), ("reference_methods.simulator",)),
        ("harness.inference", ("reference_methods",), ("reference_methods.simulator",)),
        ("harness.submission", ("reference_methods",), ("reference_methods.simulator",)),
        (
            "reference_methods.simulator",
            ("reference_methods.statistics", "reference_methods.methods"),
            (),
        ),
        ("reference_methods.statistics", ("reference_methods.methods",), ()),
    ],
)
def test_dependency_rules_hold(import_graph, source, forbidden, allowed):
    assert _violations(import_graph, source, forbidden, allowed) == []


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

    def open(self, artifact, *, spec, model_spec, reference) -> OpenedArtifact:
        return get_backend("simulated").open(
            artifact, spec=spec, model_spec=model_spec, reference=reference
        )


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
    parser = build_parser(["evaluate"])
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

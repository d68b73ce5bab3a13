"""How the package is put together: one owner per file layout, no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ecalf"
RUN_DIRECTORY_FILES = ("config.yaml", "metrics.json", "model.safetensors", "train.log")


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant that is not documentation (a string statement: a docstring, or an
    attribute's docstring), f-string parts included, with its line."""
    documentation = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation
    ]


def _names(name: str, text: str) -> bool:
    """Whether ``text`` names the file ``name`` (not a longer one: metrics.json is not metrics.jsonl)."""
    return re.search(re.escape(name) + r"(?![\w.])", text) is not None


def test_run_directory_file_names_are_spelled_in_one_module():
    """Only ecalf.run_dir names the files of a run directory; every other module asks it."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "run_dir.py":
            continue
        for line, text in _string_literals(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.relative_to(SRC)}:{line}: {n}" for n in RUN_DIRECTORY_FILES if _names(n, text)]
    assert not found, "run directory file names spelled outside ecalf/run_dir.py:\n" + "\n".join(found)
    owner = _string_literals(ast.parse((SRC / "run_dir.py").read_text(encoding="utf-8")))
    assert {text for _, text in owner} >= set(RUN_DIRECTORY_FILES)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """ecalf module -> the ecalf modules it imports anywhere in its source: at the top, inside
    functions (lazy imports) and under ``TYPE_CHECKING`` alike."""
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in paths:  # ecalf.models.calf.CALF -> ecalf.models.calf
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_no_import_cycles_among_ecalf_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a graph with a lazy back-import is a cycle, a tree is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "ecalf.registry" in graph["ecalf.models.calf"]  # the models register themselves
    assert "ecalf.models" in graph["ecalf.config_files"]  # config files name every model
    assert "ecalf.backbones.presets" in graph["ecalf.backbones.config"]  # a lazy import is seen too


def test_every_name_the_architecture_page_cites_exists():
    """docs/architecture.md walks the code by dotted names; each must resolve to a module or an
    attribute of one (a renamed function would otherwise leave the page pointing at nothing)."""
    import importlib

    page = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"`(ecalf(?:\.\w+)+)`", page)))
    assert len(names) > 30
    missing = []
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attribute in parts[cut:]:
                    obj = getattr(obj, attribute)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"docs/architecture.md cites names that do not exist: {missing}"


def test_the_cli_is_one_table_of_commands_with_one_handler_shape():
    """Every leaf command of ``ecalf`` is a row of ecalf.cli.COMMANDS whose handler takes the parsed
    arguments and returns an exit status; ``--help`` of each works."""
    import inspect

    import pytest

    from ecalf.cli import COMMANDS, build_parser

    def leaves(commands, prefix=()):
        for command in commands:
            path = (*prefix, command.name)
            if command.subcommands:
                assert command.handler is None, path
                yield from leaves(command.subcommands, path)
            else:
                yield path, command

    found = list(leaves(COMMANDS))
    assert len(found) >= 13
    parser = build_parser()
    for path, command in found:
        assert command.handler is not None, path
        assert list(inspect.signature(command.handler).parameters) == ["args"], path
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*path, "--help"])
        assert exit_.value.code == 0

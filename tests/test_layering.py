"""The shared floor reads cleanly: library code (m4mjax/, symmetry/) never imports experiments/, imports nothing
only for its side effect, and uses m4mjax/run/ through public names only (read from the source, no imports)."""
from __future__ import annotations

import ast

import pytest

from m4m_fixtures import REPO

LIBRARY = sorted(p for pkg in ("m4mjax", "symmetry") for p in (REPO / pkg).rglob("*.py"))
RUN_MODULES = {p.stem for p in (REPO / "m4mjax/run").glob("*.py")} - {"__init__"}


def _tree(path):
    return ast.parse(path.read_text(), str(path))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_module_imports(path):
    tree = _tree(path)
    run_aliases = set()  # local names bound to an m4mjax.run module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                assert not a.name.split(".")[0] == "experiments", f"{path}: imports {a.name}"
                assert a.asname or "." not in a.name or not a.name.startswith("m4mjax.run"), \
                    f"{path}: `import {a.name}` binds only the top package (an import for its side effect?)"
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            assert mod.split(".")[0] != "experiments", f"{path}: imports from {mod}"
            for a in node.names:
                if mod.startswith("m4mjax.run") and path.parent.name != "run":
                    assert not a.name.startswith("_"), f"{path}: imports private {mod}.{a.name}"
                if mod == "m4mjax.run" and a.name in RUN_MODULES:
                    run_aliases.add(a.asname or a.name)
    source = path.read_text()
    assert "noqa: F401" not in source or path.name == "__init__.py", f"{path}: an import kept for its side effect"
    if path.parent.name == "run":
        return
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for alias in run_aliases:
        assert alias in used, f"{path}: imports m4mjax.run.{alias} without using it (a side-effect import)"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in run_aliases:
            assert not node.attr.startswith("_"), f"{path}: uses private {node.value.id}.{node.attr}"


def test_sps_groups_live_in_symmetry():
    """The results tables (symmetry.summary) and the sweep (experiments) read the same group table."""
    from experiments.symmetry import sps_audio
    from symmetry import config, summary

    assert sps_audio.GROUPS is config.GROUPS and summary.GROUPS is config.GROUPS
    assert set(config.LABELS) == set(config.GROUPS) == {"sps_vae_k4", "sps_ae_k4", "vae_k0", "ae_k0", "beta_vae"}
    assert [p["name"].split("/")[1] for p in sps_audio.get_sweep("cpu")] == list(config.GROUPS)


# --- commands on top, library below ------------------------------------------------------------------------
# A command is a module with an ``if __name__ == "__main__":`` block (found here from the source, not from a list).
# Imports are read from the AST: ``import a.b``, ``from a import b`` (b a module or a name in a), imports inside
# functions, and "pkg.module:function" strings (lazy imports such as a task's evaluator).
PACKAGES = ("m4mjax", "symmetry")
MODULES = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in LIBRARY}


def _is_command(path) -> bool:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
                    isinstance(n, ast.Constant) and n.value == "__main__" for n in names):
                return True
    return False


COMMANDS = {name for name, p in MODULES.items() if _is_command(p)}


def _module_of(name: str) -> str | None:
    """The longest known module that ``name`` (a dotted module or module.attribute) lies in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(name: str) -> set[str]:
    """The m4mjax/symmetry modules that module ``name`` imports (package __init__s of a dotted import left out)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(_tree(path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            mod, _, fn = node.value.partition(":")
            if mod.split(".")[0] in PACKAGES and fn.isidentifier() and all(p.isidentifier() for p in mod.split(".")):
                targets = [mod]
        for t in targets:
            if t.split(".")[0] in PACKAGES and (m := _module_of(t)) and m != name:
                out.add(m)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_command_scan_finds_the_documented_commands():
    assert {"m4mjax.analyze", "m4mjax.sample", "m4mjax.train", "m4mjax.datasets.default", "symmetry.summary"} <= COMMANDS
    assert not {"m4mjax.sampling", "m4mjax.windows", "m4mjax.runs", "m4mjax.tasks", "m4mjax.linked"} & COMMANDS
    assert "m4mjax.analysis_scores" in GRAPH["m4mjax.task_evals"]  # string references count ("module:function")


def test_library_modules_import_no_command():
    bad = sorted(f"{m} -> {c}" for m in MODULES if m not in COMMANDS for c in GRAPH[m] & COMMANDS)
    assert not bad, "library modules importing commands (move what they need below the command):\n" + "\n".join(bad)


def test_commands_import_no_other_command():
    bad = sorted(f"{m} -> {c}" for m in COMMANDS for c in GRAPH[m] & COMMANDS)
    assert not bad, "commands importing commands:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# m4mjax.run.flag_errors imports UserError from cli, which imports flag_errors in run_main: flag_errors should
# import m4mjax.run.errors (its owner's change; drop this entry with it). No other cycle is allowed.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles():
    # package __init__s only re-export their own modules; an import of pkg.mod counts as mod, not as pkg
    graph = {m: {d for d in deps if MODULES[d].name != "__init__.py"} for m, deps in GRAPH.items()}
    cycles = [c for c in _cycles(graph) if c not in KNOWN_CYCLES]
    assert not cycles, "import cycles (imports inside functions and 'module:function' strings count):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

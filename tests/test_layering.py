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

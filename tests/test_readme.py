"""Every command in README.md is valid as written: its module exists, its config file and variant load, every
--config.KEY override names a real key, every other --flag is defined by that command, every path exists."""
from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

from m4m_fixtures import REPO

README = (REPO / "README.md").read_text()
# every command line: fenced code lines and inline `...` snippets that run a Python module
LINES = [ln.split("  #")[0].strip() for ln in re.findall(r"^(?:\.venv/bin/)?python -m [^\n]+", README, re.M)]
LINES += [s for s in re.findall(r"`([^`\n]*python -m [^`\n]*)`", README)]
# --config.KEY=VALUE snippets written without a command (they apply to the train command)
OVERRIDES = re.findall(r"`(--config\.[^`]*)`", README)
DEFAULT_CONFIG = "experiments/m4m/lm_pretrain.py:small"


def _command(line: str) -> list[str]:
    line = line.split('"python -m ', 1)[-1].rstrip('"')  # the tpu.sh line quotes the command it runs
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional parts: [--run]
    argv = shlex.split(line)
    return argv[argv.index("-m") + 1:] if "-m" in argv else argv


def _flags_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"README names module {module}, which does not exist"
    src = open(spec.origin).read()
    if "define_flags(" in src or "run_trainer(" in src or "train_main(" in src:  # the shared trainer flags
        src += (REPO / "m4mjax/run/cli.py").read_text()
    if "eval_command.run(" in src:  # the flags both held-out evaluations share
        src += (REPO / "m4mjax/eval_command.py").read_text()
    return src


def _load_config(arg: str):
    from experiments.sweep import load_experiment

    path, _, variant = arg.partition(":")
    assert (REPO / path).exists(), f"README names config {path}, which does not exist"
    mod = load_experiment(str(REPO / path))
    return mod.get_config(variant) if variant else mod.get_config()


def _has_key(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("line", sorted(set(LINES)))
def test_readme_command_is_valid(line):
    argv = _command(line)
    module, args = argv[0], argv[1:]
    if "..." in line:
        return  # a template (e.g. the tpu.sh wrapper's `--config=...`)
    src = _flags_of(module)
    config = _load_config(next(a.split("=", 1)[1] for a in args if a.startswith("--config="))) if any(
        a.startswith("--config=") for a in args) else None
    for a in args:
        if not a.startswith("--"):
            continue
        name = a[2:].split("=", 1)[0]
        if name.startswith("config."):
            assert config is not None and _has_key(config, name[len("config."):]), f"{line}: no key {name}"
        elif name != "config":
            assert re.search(rf"""["']{re.escape(name)}["']|["']--{re.escape(name)}["']""", src), \
                f"{line}: {module} defines no flag --{name}"


def test_readme_overrides_and_paths_exist():
    cfg = _load_config(DEFAULT_CONFIG)
    for snippet in OVERRIDES:
        for a in shlex.split(snippet):
            key = a[2:].split("=", 1)[0][len("config."):]
            assert _has_key(cfg, key), f"README override {a}: no such key"
    for path in re.findall(r"`((?:m4mjax|symmetry|experiments|notebooks|docs|benchmarks)/[\w./]+?)`", README):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
    assert (REPO / ".ci/run").exists() and "demo:" in (REPO / "Makefile").read_text()

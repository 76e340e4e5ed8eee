"""The weights committed under pretrained/ open as the models their config.json builds (every name and shape), so a
fresh clone's `python -m m4mjax.analyze` (no --workdir) and `--config.init_from=pretrained/NAME` work; and analyze's
default is the shipped analyser folder."""
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent.name for p in (REPO / "pretrained").glob("*/config.json"))


def test_the_shipped_analyser_is_where_analyze_looks_without_a_workdir():
    from m4mjax import analyze

    assert analyze.SHIPPED == REPO / "pretrained" / "analysis"
    assert "analysis" in SHIPPED and (REPO / "pretrained" / "analysis" / "README.md").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_folder_opens_as_its_model(name):
    import jax
    from flax import nnx

    from m4mjax import runs

    from symmetry import runs as sps_runs
    from symmetry.summary import is_sps_config

    folder = REPO / "pretrained" / name
    weights = dict(np.load(folder / "params.npz"))
    if is_sps_config(json.loads((folder / "config.json").read_text())):  # SPS: every seed's params, stacked
        state = sps_runs.load_seeds(str(folder))[3]
        state = state.to_pure_dict() if hasattr(state, "to_pure_dict") else state
    else:
        model, _ = runs.load_run(str(folder))
        state = nnx.state(model, nnx.Param).to_pure_dict()
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert set(flat) == set(weights)  # loaded every stored parameter, and no parameter is left at its initialiser
    assert all(np.array_equal(np.asarray(flat[k]), weights[k]) for k in weights)
    assert all(np.isfinite(v).all() for v in weights.values())
    assert (folder / "README.md").is_file()

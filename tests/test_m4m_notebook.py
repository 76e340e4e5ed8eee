"""notebooks/m4m_explore.ipynb runs headless (nbclient, python3 kernel) on real :tiny workdirs: an FA_cross
analysis run and chord_to_melody / others_to_drums generation runs, and shows what those runs hold."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from m4m_fixtures import REPO, tiny_config
from test_analysis import analysis_dir  # noqa: F401  (module fixture: the chord-labelled data folder)
from test_generate import data_dir  # noqa: F401  (module fixture: melody + drums + chord-track songs)

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


@pytest.fixture(scope="module")
def m4m_runs(analysis_dir, data_dir, tmp_path_factory):  # noqa: F811
    """analysis.py:tiny with link.kind=fa_cross and generation.py:chord_to_melody,tiny, each trained 2 steps on
    one device (random foundation: no init_from; no held-out eval); the others_to_drums run is the
    chord_to_melody run re-tasked (its config's task and selectors), as test_generate does: a third training
    (compile-bound, ~1 CPU-minute) would add a third to the file's time, and the notebook only needs a
    loadable run of that task."""
    from m4mjax import train

    fast = {"train.eval_every": 0, "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1}  # 1 device: less to compile
    runs = {}
    for name, experiment, arg, data, extra in (
            ("analysis", "analysis", "tiny", analysis_dir, {"link.kind": "fa_cross"}),
            ("chord_to_melody", "generation", "chord_to_melody,tiny", data_dir, {})):
        wd = tmp_path_factory.mktemp(name)
        train.train(tiny_config(data, experiment, arg, **fast, **extra), str(wd))
        runs[name] = wd
    o2d = tmp_path_factory.mktemp("others_to_drums") / "run"
    shutil.copytree(runs["chord_to_melody"], o2d)
    cfg = json.loads((o2d / "config.json").read_text())
    cfg["task"], cfg["data"]["reference"], cfg["data"]["target"] = "others_to_drums", "music_others", "music_drums"
    (o2d / "config.json").write_text(json.dumps(cfg))
    runs["others_to_drums"] = o2d
    return runs


def test_m4m_explore_notebook(m4m_runs, monkeypatch, tmp_path):
    from m4mjax.runs import load_run

    out = tmp_path / "out"
    monkeypatch.setenv("ANALYSIS_WORKDIR", str(m4m_runs["analysis"]))  # the kernel inherits the env
    monkeypatch.setenv("MELODY_WORKDIR", str(m4m_runs["chord_to_melody"]))
    monkeypatch.setenv("DRUMS_WORKDIR", str(m4m_runs["others_to_drums"]))
    monkeypatch.setenv("M4M_OUT_DIR", str(out))
    monkeypatch.delenv("MIDI", raising=False)  # the notebook writes its own chord progression
    nb = nbformat.read(REPO / "notebooks/m4m_explore.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]  # stored cleared
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs]
    assert sum("image/png" in d for d in data) >= 4            # analysis roll, melody roll, drums roll, gates
    assert sum("<audio" in d.get("text/html", "") for d in data) >= 2  # melody and drums (+ the song)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    # the analysis cell's counts are the ones analyze.write_outputs wrote (.lab / .beats: a line per item)
    m = re.search(r"analysis: (\d+) chord segments, (\d+) downbeats", text)
    assert m, text
    assert int(m[1]) == len((out / "analysis/progression.lab").read_text().splitlines()) >= 1
    assert int(m[2]) == len((out / "analysis/progression.beats").read_text().splitlines())
    assert re.search(r"melody: \d+ generated notes", text) and re.search(r"drums: \d+ generated notes", text)
    assert (out / "melody/progression.mid").is_file() and (out / "drums/progression.mid").is_file()

    # the plotted gates are the checkpoint's: one per adapted global layer (0, every, 2*every, ...)
    m = re.search(r"adapter gates \(global layer: value\): (\{.*\})", text)
    assert m, text
    shown = {int(k): v for k, v in json.loads(m[1]).items()}
    model, cfg = load_run(str(m4m_runs["analysis"]))
    every = int(cfg.link.adapter_every)
    want = {i * every: np.asarray(a.gate[...]).ravel() for i, a in enumerate(model.adapters)}
    assert sorted(shown) == sorted(want) and want
    for layer, g in want.items():
        np.testing.assert_allclose(shown[layer], g, rtol=1e-6, err_msg=f"layer {layer}")
    assert any(np.any(g != 0) for g in want.values())  # trained: the gates left their zero init

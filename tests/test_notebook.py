"""notebooks/pitch_axis.ipynb runs headless (nbclient, python3 kernel) on a real :tiny workdir."""
from __future__ import annotations

import pytest

from sps_fixtures import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def test_pitch_axis_notebook(sps_tiny_root, monkeypatch):
    monkeypatch.setenv("SPS_WORKDIR", str(sps_tiny_root / "sps_vae_k4"))  # the kernel inherits the env
    nb = nbformat.read(REPO / "notebooks/pitch_axis.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs]
    assert sum("image/png" in d for d in data) >= 3                   # loss curves, latent vs pitch, sweep
    assert any("<audio" in d.get("text/html", "") for d in data)      # IPython.display.Audio widgets

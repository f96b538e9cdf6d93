"""examples/explorer.ipynb, executed in a real Jupyter kernel (nbclient, the `python3` kernel of this Python) on the
session's demo (conftest's `demo_store`, passed to the notebook through $RELAYLAB_DEMO_DIR): every cell runs, the
explorer cell displays Panel's Bokeh document of the explorer, and the view state set from code gives the expected
share-link query. Also: the committed notebook carries no outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "explorer.ipynb"
EXEC_MIME = "application/vnd.holoviews_exec.v0+json"  # Panel's mime type of a displayed component (its root id in metadata)
LOAD_MIME = "application/vnd.holoviews_load.v0+json"  # Panel's mime type of pn.extension()'s loaders (BokehJS, comms)


def code_cell(nb, start: str):
    """The notebook's one code cell whose source starts with `start`."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]
    return cell


def models(value):
    """Every Bokeh model serialized in a document's JSON (dicts of type "object"), depth first."""
    if isinstance(value, dict):
        if value.get("type") == "object":
            yield value
        for item in value.values():
            yield from models(item)
    elif isinstance(value, list):
        for item in value:
            yield from models(item)


def test_committed_notebook_is_clean():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_notebook_runs_on_the_demo(demo_store, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install relaylab[test])")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install relaylab[test])")
    monkeypatch.setenv("RELAYLAB_DEMO_DIR", str(demo_store.parent))  # the kernel inherits it: ensure_demo() reuses the session's demo
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))  # which Python the kernel runs
    # the python3 kernel spec's argv[0] "python" is replaced by this process's sys.executable (jupyter_client)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError if any cell raised

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert code_cell(nb, "import sys").outputs[0].text.strip() == sys.prefix
    assert code_cell(nb, "store = ensure_demo()").outputs[0].text.strip() == str(demo_store)

    # pn.extension() loads BokehJS and Panel's comm manager into the page
    loads = [o for o in code_cell(nb, "import panel as pn").outputs if LOAD_MIME in o.get("data", {})]
    assert any("Bokeh" in o.data[LOAD_MIME] for o in loads) and any("JupyterCommManager" in o.data[LOAD_MIME] for o in loads)

    # the explorer cell's result is Panel's display of the component: HTML embedding the Bokeh document, whose root is
    # the model the exec metadata names, holding the explorer's project tabs
    (result,) = [o for o in code_cell(nb, "explorer = Explorer(store)").outputs if o.output_type == "execute_result"]
    assert {"text/html", EXEC_MIME} <= set(result.data)
    root_id = result.metadata[EXEC_MIME]["id"]
    html = result.data["text/html"]
    assert f'data-root-id="{root_id}"' in html
    docs_json = json.loads(re.search(r"var docs_json = (\{.*?\});\n", html, re.S).group(1))
    (doc,) = docs_json.values()
    (root,) = [r for r in doc["roots"] if r["id"] == root_id]
    tabs = [m for m in models(root) if m["name"] == "panel.models.tabs.Tabs" and "rl-projects" in m["attributes"].get("css_classes", [])]
    assert len(tabs) == 1
    assert [panel["attributes"]["title"] for panel in tabs[0]["attributes"]["tabs"]] == ["digits-clever-hans"]

    # the view state set from code, as a share link's query
    (printed,) = code_cell(nb, "view = explorer.views[0]").outputs
    query = dict(pair.split("=", 1) for pair in printed.text.strip().split("&"))
    assert query["project"] == "digits-clever-hans"
    assert (query["analysisCategory"], query["colorBy"], query["sample"], query["tab"]) == ("digit-3", "artifact", "5", "sample")

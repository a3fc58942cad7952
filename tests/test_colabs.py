"""The Colab notebooks: colabs/<name>.py (jupytext percent format, the source) must match the
paired colabs/<name>.ipynb (what Colab opens), and each notebook must run top to bottom in a
fresh kernel with its small parameters, every picture cell producing a real image.

Execution follows papermill's convention without needing papermill: a cell tagged
`injected-parameters` holding SMALL_PARAMETERS goes right after the cell tagged `parameters`.
The kernel is this interpreter (a kernel spec written for it, so a fresh virtualenv with
ipykernel is enough), started in a temporary folder with the repository on PYTHONPATH and
JAX seeing one CPU device, as on a user's machine.
"""

import os
import re

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import REPO

COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = ("quickstart", "pretrained_weights", "custom_data")
SMALL_PARAMETERS = "SMALL = True"
FIGURE_TAG = "figure"  # cells that must display a picture (image/png)
SYNC_HINT = "regenerate it from the .py: jupytext --to ipynb colabs/{name}.py"


def _cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in nb.cells]


def _read_py(name: str):
    return jupytext.read(os.path.join(COLABS, f"{name}.py"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_matches_its_py(name):
    py = _cells(_read_py(name))
    ipynb_nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
    ipynb = _cells(ipynb_nb)
    hint = SYNC_HINT.format(name=name)
    for i, (a, b) in enumerate(zip(py, ipynb)):
        assert a == b, (f"colabs/{name}.ipynb cell {i} differs from colabs/{name}.py "
                        f"({hint}):\n--- .py:\n{a[1]}\n--- .ipynb:\n{b[1]}")
    assert len(py) == len(ipynb), f"colabs/{name}: {len(py)} cells in .py, {len(ipynb)} in .ipynb ({hint})"
    with_outputs = [i for i, c in enumerate(ipynb_nb.cells) if c.cell_type == "code"
                    and (c.outputs or c.execution_count is not None)]
    assert not with_outputs, f"colabs/{name}.ipynb cells {with_outputs} hold outputs ({hint})"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
    """Intro first, then the Colab-aware setup cell, then one `parameters` cell with SMALL."""
    cells = _read_py(name).cells
    code = [c for c in cells if c.cell_type == "code"]
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    setup = code[0].source
    assert '"google.colab" in sys.modules' in setup and "REPO_URL =" in setup
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code[1] is params[0]
    assert re.search(r"^SMALL = False\b", params[0].source, re.M)
    assert any(FIGURE_TAG in c.metadata.get("tags", []) for c in cells)


def inject_parameters(nb, source: str):
    """Inserts an `injected-parameters` cell after the `parameters` cell (papermill's way)."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        source, metadata={"tags": ["injected-parameters"]}))
    return nb


def kernel_env() -> dict:
    """This process's environment for the kernel, minus the test suite's 8 fake devices and any
    non-interactive matplotlib backend, plus the repository on PYTHONPATH."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    env.pop("MPLBACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    return env


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
    """A kernel spec for this interpreter, found through JUPYTER_PATH (independent of any
    kernel installed on the machine)."""
    from ipykernel.kernelspec import write_kernel_spec

    data_dir = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(str(data_dir / "kernels" / "personvit-tests"),
                      overrides={"display_name": "personvit tests"})
    monkeypatch_module.setenv("JUPYTER_PATH", str(data_dir))
    return "personvit-tests"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_small(name, tmp_path, kernel_name):
    nb = inject_parameters(_read_py(name), SMALL_PARAMETERS)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    repo_before = set(os.listdir(REPO))
    client = NotebookClient(nb, timeout=900, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as e:
        pytest.fail(f"colabs/{name}.py: a cell failed\n{e}", pytrace=False)
    finally:
        nbformat.write(nb, str(tmp_path / f"{name}.executed.ipynb"))
    for i, cell in enumerate(nb.cells):
        if FIGURE_TAG in cell.metadata.get("tags", []):
            images = [o for o in cell.outputs if o.output_type == "display_data"
                      and "image/png" in o.get("data", {})]
            assert images, (f"colabs/{name}.py cell {i} (tagged {FIGURE_TAG!r}) displayed no "
                            f"image:\n{cell.source[:300]}")
    assert set(os.listdir(REPO)) == repo_before, "the notebook wrote into the repository"
    assert os.listdir(cwd), "the notebook wrote nothing into its working folder"


def test_injected_parameters_reach_the_kernel_and_a_failing_cell_fails(tmp_path, kernel_name):
    """The harness itself: the injected cell runs after the `parameters` cell, and an error in a
    later cell raises CellExecutionError carrying the cell's error."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("SMALL = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os\nassert not SMALL, os.environ['XLA_FLAGS']")])
    inject_parameters(nb, SMALL_PARAMETERS)
    assert [c.metadata.get("tags") for c in nb.cells] == [["parameters"], ["injected-parameters"],
                                                           None]
    client = NotebookClient(nb, timeout=120, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="AssertionError") as e:
        client.execute(env=kernel_env())
    assert "force_host_platform_device_count" not in str(e.value)  # one device, as for users

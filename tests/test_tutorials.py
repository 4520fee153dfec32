"""The tutorial notebooks run top to bottom, in quick mode, in a fresh Jupyter kernel.

Each notebook in tutorials/ (01–06 and 08, and a curvature notebook 07 when present) is executed with nbclient (kernel ``python3`` of this Python,
working directory tutorials/, ``NUMPY_AMAML_QUICK=1``); any error in any cell fails the test.
The notebooks handle their own optional parts (the Omniglot notebook prints a message and
skips its data cells when the data is absent): nothing is skipped here. The Omniglot
notebook is also run once with the data made unreachable, to prove that path works.
"""
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = ["01_layers_and_gradient_checks", "02_hessian_vector_products", "03_maml_sinusoid",
            "04_alpha_maml", "05_omniglot_few_shot", "06_sensitivity", "08_cnn_second_order",
            "09_learned_inner_rates"]
OPTIONAL = "07_"            # a curvature notebook 07 may or may not be present: run it if it is
CELL_TIMEOUT = 300          # seconds per cell; quick mode needs a few seconds per notebook


def execute(path, env=None):
    """Run the notebook at ``path`` in a fresh kernel; returns (executed notebook, seconds)."""
    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update({"NUMPY_AMAML_QUICK": "1", **(env or {})})
    os.environ.pop("MPLBACKEND", None)            # the kernel's own inline backend draws the figures
    try:
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                resources={"metadata": {"path": str(TUTORIALS)}})
        start = time.perf_counter()
        client.execute()
        return nb, time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)


_EXECUTED = {}


def executed(path):
    """``execute(path)`` once per test session (several tests read the same quick-mode run)."""
    if path not in _EXECUTED:
        _EXECUTED[path] = execute(path)
    return _EXECUTED[path]


def stream_text(nb):
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.output_type == "stream")


def test_every_tutorial_is_present():
    assert [p.stem for p in NOTEBOOKS if not p.stem.startswith(OPTIONAL)] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name} cell {i} carries outputs: clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_quick_mode(path):
    try:
        nb, seconds = executed(path)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}")
    print(f"{path.name}: {seconds:.1f} s in quick mode")
    assert "quick mode" in stream_text(nb)       # the setup cell saw NUMPY_AMAML_QUICK=1


def test_omniglot_notebook_without_data_prints_why_and_still_runs(tmp_path):
    path = TUTORIALS / "05_omniglot_few_shot.ipynb"
    missing = tmp_path / "no-omniglot-here"
    try:
        nb, _ = execute(path, env={"NUMPY_AMAML_OMNIGLOT_DIR": str(missing)})
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed without data:\n{err}")
    text = stream_text(nb)
    assert "Omniglot data not found" in text and str(missing) in text


def test_omniglot_notebook_adapts_the_shipped_theta():
    """Notebook 5 loads the meta-trained θ shipped in docs/shipped/ and shows that it beats the
    random initialisation on meta-test tasks (skipped without the Omniglot data)."""
    path = TUTORIALS / "05_omniglot_few_shot.ipynb"
    try:
        nb, _ = executed(path)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}")
    text = stream_text(nb)
    assert "docs/shipped/omniglot_maml_5way1shot.npz" in text
    if "Omniglot data not found" in text:
        pytest.skip("no Omniglot data here")
    accuracy = {}
    for line in text.splitlines():
        if " over " in line and "tasks:" in line:   # "<label> over n tasks: 0 steps a% ± c%, 1 steps b% ± ..."
            label = line.split(" over ")[0].strip()
            accuracy[label] = float(line.split("1 steps ")[1].split("%")[0]) / 100
    assert accuracy["meta-trained theta, 1 query per class"] > 0.8 > accuracy["random theta, 1 query per class"], accuracy

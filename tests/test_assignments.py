"""Classroom assignments: ``python -m numpy_amaml assignments make OUT_DIR``.

The student notebooks must hold no solution code and no hidden tests; in them every graded
cell must fail (with NotImplementedError, while every other cell runs); putting the reference
solutions back must make every graded cell pass. The notebooks run in a real Jupyter kernel
(nbclient), in quick mode.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from numpy_amaml import assignments
from numpy_amaml.assignments import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, END_SOLUTION,
                                     AssignmentError)

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
EXERCISES = {
    "01_layers_and_gradient_checks.ipynb": ["linear_backward"],
    "02_hessian_vector_products.ipynb": ["linear_r_backward", "softmax_ce_r_backward"],
    "03_maml_sinusoid.ipynb": ["maml_meta_gradient_k1"],
    "04_alpha_maml.ipynb": ["alpha_hypergradient", "beta_rule"],
}
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Run the command once: (OUT_DIR, its stdout)."""
    out = tmp_path_factory.mktemp("student")
    result = subprocess.run([sys.executable, "-m", "numpy_amaml", "assignments", "make", str(out),
                             "--source", str(TUTORIALS)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def code_lines(nb):
    return [line for cell in nb["cells"] if cell["cell_type"] == "code"
            for line in assignments.cell_source(cell).splitlines()]


def split_lines(nb):
    """Stripped, non-blank code lines of ``nb`` by where they stand (parsed here, independently
    of the module): {"solution": [...], "hidden": [...], "outside": [...]}; markers dropped."""
    parts, state = {"solution": [], "hidden": [], "outside": []}, "outside"
    switch = {BEGIN_SOLUTION: "solution", END_SOLUTION: "outside",
              BEGIN_HIDDEN: "hidden", END_HIDDEN: "outside"}
    for line in code_lines(nb):
        if line.strip() in switch:
            state = switch[line.strip()]
        elif line.strip():
            parts[state].append(line.strip())
    return parts


def execute(nb, until_last_graded=False):
    """Run the notebook's code cells in a fresh kernel, errors allowed (all of them, or up to
    the last graded cell). Returns {cell index: exception name or None}."""
    nb = nbformat.reads(json.dumps(nb), as_version=4)     # joins list-of-lines sources
    if until_last_graded:
        nb.cells = nb.cells[:max(i for i, _ in assignments.graded_cells(nb)) + 1]
    saved = dict(os.environ)
    os.environ["NUMPY_AMAML_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {i: next((o.ename for o in cell.outputs if o.output_type == "error"), None)
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}


# ---- the command and the student notebooks ------------------------------------------------------

def test_make_writes_every_notebook_and_prints_a_summary(made):
    out, stdout = made
    sources = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert sorted(p.name for p in out.glob("*.ipynb")) == sources
    for name in sources:
        assert name in stdout
    for names in EXERCISES.values():
        for exercise in names:
            assert exercise in stdout
    assert "hidden tests removed" in stdout
    assert f"total: {sum(map(len, EXERCISES.values()))} exercises" in stdout


def test_source_notebooks_hold_the_expected_exercises():
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        nb = assignments.read_notebook(path)
        assert [n for _, n in assignments.graded_cells(nb)] == EXERCISES.get(path.name, []), path.name
    assert sum(map(len, EXERCISES.values())) >= 5


@pytest.mark.parametrize("name", sorted(p.name for p in TUTORIALS.glob("*.ipynb")))
def test_student_notebook_holds_no_solution_and_no_hidden_test(made, name):
    out, _ = made
    source = assignments.read_notebook(TUTORIALS / name)
    student = assignments.read_notebook(out / name)
    raw = (out / name).read_text(encoding="utf-8")
    for marker in MARKERS:
        assert marker not in raw, f"{name}: {marker!r} left in the student version"

    student_lines = {line.strip() for line in code_lines(student)}
    parts = split_lines(source)
    # a line that the source notebook also shows outside every region is no secret
    outside = set(parts["outside"])
    secret = [line for line in parts["solution"] if line not in outside]
    assert len(secret) >= 0.8 * len(parts["solution"]), f"{name}: solution lines repeated elsewhere"
    leaked = [line for line in secret if line in student_lines]
    assert not leaked, f"{name}: solution lines in the student version: {leaked}"
    leaked = [line for line in parts["hidden"] if line not in outside and line in student_lines]
    assert not leaked, f"{name}: hidden-test lines in the student version: {leaked}"

    assert [n for _, n in assignments.graded_cells(student)] == EXERCISES.get(name, [])
    stubs = [i for i, line in enumerate(code_lines(student)) if line.strip() == "raise NotImplementedError()"]
    regions = sum(line.strip() == BEGIN_SOLUTION for line in code_lines(source))
    assert len(stubs) == regions
    begins = [line for line in code_lines(source) if line.strip() == BEGIN_SOLUTION]
    for i, begin in zip(stubs, begins):          # the stub keeps the region's indentation
        indent = begin[:len(begin) - len(begin.lstrip())]
        assert code_lines(student)[i - 1] == indent + "# YOUR CODE HERE"
        assert code_lines(student)[i] == indent + "raise NotImplementedError()"
    for cell in student["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_graded_cells_fail_for_students_and_pass_with_the_solutions_back(made, name):
    out, _ = made
    source = assignments.read_notebook(TUTORIALS / name)
    student = assignments.read_notebook(out / name)
    graded = dict(assignments.graded_cells(student))

    errors = execute(student)            # the whole notebook, as a student would run it
    for i, ename in errors.items():
        if i in graded:
            assert ename == "NotImplementedError", f"{name}: graded cell {graded[i]!r} gave {ename}"
        else:
            assert ename is None, f"{name}: cell {i} (not graded) raised {ename} in the student version"

    # put the reference solutions back into the student notebook, cell by cell
    restored = assignments.read_notebook(out / name)
    for cell, original in zip(restored["cells"], source["cells"]):
        if cell["cell_type"] == "code":
            regions = assignments.solution_regions(assignments.cell_source(original))
            cell["source"] = assignments.insert_solutions(assignments.cell_source(cell), regions)
    errors = execute(restored, until_last_graded=True)   # the rest: tests/test_tutorials.py
    assert all(ename is None for ename in errors.values()), {i: e for i, e in errors.items() if e}
    assert set(graded) <= set(errors)


# ---- the module on small inputs --------------------------------------------------------------------

def notebook(*cells):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "code", "source": text, "metadata": {}, "outputs": [{"x": 1}],
                       "execution_count": 3} for text in cells]}


def test_solution_region_becomes_a_stub_at_its_indentation():
    text = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    stripped, n = assignments.strip_solutions(text)
    assert n == 1
    assert stripped == "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    regions = assignments.solution_regions(text)
    assert assignments.insert_solutions(stripped, regions) == text


def test_hidden_tests_are_removed_and_outputs_cleared():
    nb = notebook("# GRADED: ex\nassert True\n### BEGIN HIDDEN TESTS\nassert 2 > 1\n### END HIDDEN TESTS\nprint('ok')",
                  "def g():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    student, summary = assignments.student_notebook(nb, "toy.ipynb")
    assert assignments.cell_source(student["cells"][0]) == "# GRADED: ex\nassert True\nprint('ok')"
    assert "raise NotImplementedError()" in assignments.cell_source(student["cells"][1])
    assert (summary.exercises, summary.solutions_replaced, summary.hidden_tests_removed) == (["ex"], 1, 1)
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in student["cells"])
    assert nb["cells"][0]["outputs"] == [{"x": 1}]          # the source is left alone


@pytest.mark.parametrize("text, problem", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another region"),
    ("### BEGIN HIDDEN TESTS\nassert x\n", "never closed"),
])
def test_malformed_markers_are_named(text, problem):
    with pytest.raises(AssignmentError, match=rf"toy\.ipynb, cell 1: line \d+: .*{problem}"):
        assignments.student_notebook(notebook("x = 0", text), "toy.ipynb")


def test_graded_cell_with_a_solution_and_duplicate_names_are_refused():
    with pytest.raises(AssignmentError, match="graded cell must not hold a solution"):
        assignments.student_notebook(notebook("# GRADED: a\n### BEGIN SOLUTION\nx\n### END SOLUTION"), "t")
    with pytest.raises(AssignmentError, match="more than one graded cell"):
        assignments.student_notebook(notebook("# GRADED: a\nassert 1", "# GRADED: a\nassert 1"), "t")


def test_command_refuses_missing_source_and_overwriting_it(tmp_path, capsys):
    from numpy_amaml.cli import main
    assert main(["assignments", "make", str(tmp_path / "out"), "--source", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assignments.write_notebook(notebook("x = 1"), tmp_path / "a.ipynb")
    assert main(["assignments", "make", str(tmp_path), "--source", str(tmp_path)]) == 1
    assert "must differ" in capsys.readouterr().err
    assert (tmp_path / "a.ipynb").is_file()

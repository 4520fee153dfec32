"""Mutation tests for the grader: every plausible wrong solution fails its graded cell.

A graded cell that a wrong solution passes is a hole a class of 200 students will find. For each
exercise, ``tests/grader_mutants/nbNN.py`` lists plausible wrong solutions ("mutants": a flipped
sign, a missing factor 1/B, first order for second order, frozen batch statistics, finite
differences of the package, reading the notebook's globals, ...), each as the Python body that
replaces the exercise's solution region.

For each notebook, one Jupyter kernel (quick mode, working directory tutorials/) runs the SOURCE
notebook — reference solutions in place, hidden tests included — cell by cell up to its last
graded cell; every cell must pass. Then, for each exercise and each of its mutants:

1. the solution cell (the code cell with solution regions nearest before the graded cell) runs
   with the mutant's body in place of its solution region; it only defines functions, so it must
   run without error;
2. the graded cell runs and must raise — and not with SyntaxError, NameError or
   NotImplementedError, which would mean a broken mutant rather than a caught one;
3. the reference solution cell and the graded cell run again and must pass, so that no mutant
   can spoil the state for the next one, and no graded cell depends on what a mutant changed.
"""
import importlib
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from numpy_amaml.commands import assignments

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
MUTANTS_DIR = Path(__file__).resolve().parent / "grader_mutants"
MIN_MUTANTS = 4
NOT_CAUGHT = {"SyntaxError", "IndentationError", "NameError", "NotImplementedError"}


def notebook_with_exercises():
    """{notebook number "NN": path} of the source notebooks that have graded cells."""
    found = {}
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        if assignments.graded_cells(assignments.read_notebook(path)):
            found[path.name[:2]] = path
    return found


NOTEBOOKS = notebook_with_exercises()


def mutants_of(number):
    """The MUTANTS dict of tests/grader_mutants/nb<number>.py ({} when the module is missing)."""
    if not (MUTANTS_DIR / f"nb{number}.py").is_file():
        return {}
    return importlib.import_module(f"tests.grader_mutants.nb{number}").MUTANTS


def solution_cell_before(nb, graded_index):
    """Index of the code cell with solution regions nearest before the graded cell."""
    for i in range(graded_index - 1, -1, -1):
        cell = nb.cells[i]
        if cell.cell_type == "code" and assignments.BEGIN_SOLUTION in cell.source:
            return i
    raise AssertionError(f"no solution cell before graded cell {graded_index}")


def with_bodies(source, bodies):
    """``source`` with its solution regions replaced, in order, by ``bodies`` (unindented text)."""
    regions = assignments.solution_regions(source)
    assert len(bodies) == len(regions), f"{len(bodies)} mutant bodies for {len(regions)} solution regions"
    stripped, _ = assignments.strip_solutions(source)
    new = [(indent, [indent + line if line.strip() else line for line in body.strip("\n").splitlines()])
           for (indent, _), body in zip(regions, bodies)]
    return assignments.insert_solutions(stripped, new)


class Kernel:
    """One kernel running cells of ``nb`` on demand; ``run(i, source)`` -> error name or None."""

    def __init__(self, nb):
        self.nb = nb
        self.sources = [cell.source for cell in nb.cells]    # nbclient stores executed cells in nb
        self.client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(TUTORIALS)}})

    def run(self, index, source=None):
        cell = nbformat.from_dict(json.loads(json.dumps(self.nb.cells[index])))
        cell.source = self.sources[index] if source is None else source
        cell.outputs = []
        self.client.execute_cell(cell, index)
        errors = [o for o in cell.outputs if o.output_type == "error"]
        return (errors[0].ename, errors[0].evalue) if errors else None


@pytest.fixture(scope="module")
def quick_mode():
    saved = dict(os.environ)
    os.environ["NUMPY_AMAML_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_every_exercise_has_its_mutants():
    for number, path in NOTEBOOKS.items():
        exercises = [name for _, name in assignments.graded_cells(assignments.read_notebook(path))]
        mutants = mutants_of(number)
        assert sorted(mutants) == sorted(exercises), f"{path.name}: mutants for {sorted(mutants)}, exercises {exercises}"
        for exercise, listed in mutants.items():
            assert len(listed) >= MIN_MUTANTS, f"{path.name}, {exercise}: {len(listed)} mutants, need {MIN_MUTANTS}"


@pytest.mark.parametrize("number", sorted(NOTEBOOKS), ids=lambda n: f"nb{n}")
def test_every_mutant_fails_its_graded_cell_and_the_reference_passes(number, quick_mode):
    nb = nbformat.read(NOTEBOOKS[number], as_version=4)
    graded = assignments.graded_cells(nb)
    mutants = mutants_of(number)
    kernel = Kernel(nb)
    solution_cells = {i: solution_cell_before(nb, i) for i, _ in graded}
    report = []
    with kernel.client.setup_kernel():
        for i in range(graded[-1][0] + 1):
            if nb.cells[i].cell_type == "code":
                error = kernel.run(i)
                assert error is None, f"{NOTEBOOKS[number].name}, cell {i} fails with the reference solutions: {error}"
        for graded_index, exercise in graded:
            solution_index = solution_cells[graded_index]
            for label, bodies in mutants.get(exercise, {}).items():
                bodies = (bodies,) if isinstance(bodies, str) else tuple(bodies)
                mutated = with_bodies(kernel.sources[solution_index], bodies)
                error = kernel.run(solution_index, mutated)
                assert error is None, f"{exercise}, mutant {label!r}: its solution cell does not run: {error}"
                caught = kernel.run(graded_index)
                if caught is None or caught[0] in NOT_CAUGHT:
                    report.append(f"{exercise}, mutant {label!r}: "
                                  + ("PASSED the graded cell" if caught is None else f"raised {caught[0]}: {caught[1]}"))
                assert kernel.run(solution_index) is None
                error = kernel.run(graded_index)
                assert error is None, f"{exercise}: the reference fails after mutant {label!r}: {error}"
    assert not report, "\n".join(report)

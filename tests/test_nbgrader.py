"""The tutorial notebooks as an nbgrader course: real nbgrader, nothing installed at run time.

In a temporary course directory (``nbgrader_config.py`` + ``source/tutorials/`` = every notebook
of tutorials/), this runs the commands of tutorials/README.md ("Grading with nbgrader"):

* ``nbgrader generate_assignment tutorials`` — its release must have, cell by cell, the same
  sources as the student versions of ``python -m numpy_amaml assignments make`` (code stubs,
  "YOUR ANSWER HERE" for the written answers, hidden tests removed);
* ``nbgrader autograde tutorials`` in quick mode (``NUMPY_AMAML_QUICK=1``,
  ``--ExecutePreprocessor.timeout``) on two submissions of every notebook with a code exercise
  (AUTOGRADED, found in the source notebooks: each also asks written questions): the untouched
  release must score 0 points, the instructor's notebooks (the solutions) full points — every
  autograded cell at once, the written answers after a grader accepts them (set through nbgrader's
  Gradebook, as the formgrader does). The notebooks without exercises (05, 06: written questions
  only) are checked by generate_assignment alone; autograde would only run them again.

Skipped when nbgrader is not installed (it belongs in requirements-dev.txt). nbgrader calls the
``alembic`` executable, so the folder of this Python's executables goes first on PATH.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -r requirements-dev.txt)")
from nbgrader.api import Gradebook  # noqa: E402

from numpy_amaml.commands import assignments  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
ASSIGNMENT = "tutorials"
AUTOGRADED = sorted(p.name for p in TUTORIALS.glob("*.ipynb")
                    if assignments.graded_cells(assignments.read_notebook(p)))
CELL_TIMEOUT = 300            # seconds; nbgrader's default of 30 is too short for full mode
STUDENTS = ("untouched", "solutions")


def run_nbgrader(course, *args):
    """``python -m nbgrader ARGS`` in the course directory, quick mode; returns its output."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NUMPY_AMAML_QUICK"] = "1"
    env.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The course directory after generate_assignment and autograde of both submissions."""
    root = tmp_path_factory.mktemp("course")
    (root / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "numpy_amaml"\n')
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    for path in TUTORIALS.glob("*.ipynb"):
        shutil.copy(path, source / path.name)
    log = run_nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    for student, origin in zip(STUDENTS, (root / "release" / ASSIGNMENT, TUTORIALS)):
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        for name in AUTOGRADED:
            shutil.copy(origin / name, folder / name)
    log += run_nbgrader(root, "autograde", ASSIGNMENT, f"--ExecutePreprocessor.timeout={CELL_TIMEOUT}")
    return root, log


def gradebook(root):
    return Gradebook(f"sqlite:///{root / 'gradebook.db'}")


@pytest.mark.parametrize("name", sorted(p.name for p in TUTORIALS.glob("*.ipynb")))
def test_generate_assignment_equals_the_projects_student_version(course, name):
    root, _ = course
    released = nbformat.read(root / "release" / ASSIGNMENT / name, as_version=4)
    ours, _ = assignments.student_notebook(assignments.read_notebook(TUTORIALS / name), name)
    ours = nbformat.reads(json.dumps(ours), as_version=4)
    assert len(released.cells) == len(ours.cells), name
    for i, (a, b) in enumerate(zip(released.cells, ours.cells)):
        assert (a.cell_type, a.source) == (b.cell_type, b.source), f"{name}, cell {i}"
    for i, _ in assignments.answer_cells(assignments.read_notebook(TUTORIALS / name)):
        assert "YOUR ANSWER HERE" in released.cells[i].source and "BEGIN SOLUTION" not in released.cells[i].source


def test_untouched_release_scores_zero(course):
    root, _ = course
    with gradebook(root) as gb:
        for name in AUTOGRADED:
            notebook = gb.find_submission_notebook(Path(name).stem, ASSIGNMENT, "untouched")
            assert notebook.max_score > 0
            assert notebook.score == 0, f"{name}: {notebook.score} points for the untouched release"
            kinds = {g.cell_type for g in notebook.grades}
            assert kinds == {"code", "markdown"}, f"{name}: needs a code exercise and a written question"
            for grade in notebook.grades:         # unchanged answers get 0 without a grader
                assert grade.auto_score == 0 and not grade.needs_manual_grade, (name, grade.name)


def test_solutions_score_full_points(course):
    root, _ = course
    with gradebook(root) as gb:
        for name in AUTOGRADED:
            notebook = gb.find_submission_notebook(Path(name).stem, ASSIGNMENT, "solutions")
            for grade in notebook.grades:
                if grade.cell_type == "code":     # the autograded tests pass: all their points
                    assert grade.auto_score == grade.max_score, (name, grade.name, grade.auto_score)
                else:                             # written answers wait for a grader ...
                    assert grade.auto_score is None and grade.needs_manual_grade, (name, grade.name)
                    grade.manual_score = grade.max_score      # ... who accepts the model answer
            gb.db.commit()
            notebook = gb.find_submission_notebook(Path(name).stem, ASSIGNMENT, "solutions")
            assert notebook.score == notebook.max_score > 0, (name, notebook.score, notebook.max_score)


def test_the_only_warnings_are_the_documented_ones(course):
    """tutorials/README.md: autograde warns that the checksums of graded cells with hidden tests
    changed (it puts the hidden tests back), and about notebooks that were not submitted."""
    _, log = course
    warnings = [line for line in log.splitlines() if "| WARNING]" in line]
    for line in warnings:
        assert ("Attribute 'checksum' for cell" in line and "_test has changed" in line) \
            or "No submitted file" in line, line
    assert any("checksum" in line for line in warnings)

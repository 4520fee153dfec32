"""Classroom assignments: ``python -m numpy_amaml assignments make OUT_DIR``.

The student notebooks must hold no solution code, no model answer and no hidden tests; in them
every graded cell must fail (with NotImplementedError, while every other cell runs); putting the
reference solutions back must make every graded cell pass; a "solution" that only calls the
package's own implementation of the same thing must fail its graded cell. Every notebook asks at
least two written questions (nbgrader's manually graded answer cells). The notebooks run in a real
Jupyter kernel (nbclient), in quick mode.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from numpy_amaml.commands import assignments
from numpy_amaml.commands.assignments import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, END_SOLUTION,
                                     AssignmentError)

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
EXERCISES = {
    "01_layers_and_gradient_checks.ipynb": ["linear_backward"],
    "02_hessian_vector_products.ipynb": ["linear_r_backward", "softmax_ce_r_backward"],
    "03_maml_sinusoid.ipynb": ["maml_meta_gradient_k1"],
    "04_alpha_maml.ipynb": ["alpha_hypergradient_forward", "adam_beta_hypergradient"],
    "05_omniglot_few_shot.ipynb": [],
    "06_sensitivity.ipynb": [],
    "07_curvature.ipynb": ["power_iteration"],
    "08_cnn_second_order.ipynb": ["conv2d_input_grad", "conv2d_r_backward", "batchnorm_r_forward",
                                  "batchnorm_r_backward", "meta_gradient_per_tensor"],
    "09_learned_inner_rates.ipynb": ["lslr_alpha_gradient"],
}
# For each exercise, a body that only calls the package's own implementation: its graded cell must fail.
BYPASS = {
    "linear_backward": "return linear.backward(dy, cache)",
    "linear_r_backward": "return linear.r_backward(dy, Rdy, cache, rcache)",
    "softmax_ce_r_backward": "return softmax_ce.r_backward(Rlogits, cache)",
    "maml_meta_gradient_k1": "return maml.meta_gradient(model, theta, batch, alpha, inner_steps=1).grad",
    "alpha_hypergradient_forward": "return maml.meta_gradient(model, theta, batch, alpha, K).dJ_dalpha, None",
    "adam_beta_hypergradient": "return opt.beta_hypergradient(g_t)",
    "power_iteration": ("mu, _, _ = curvature._power_iteration(lambda u: {k: a[None] for k, a in hvp({k: a[0] for k, a "
                        "in u.items()}).items()}, {k: a[None] for k, a in v.items()}, np.zeros(1), iterations, 0.0); "
                        "return float(mu[0]), v"),
    "conv2d_input_grad": "return conv2d.backward(dy, (conv2d.im2col(np.zeros(x_shape), stride), W, x_shape, stride))[0]",
    "conv2d_r_backward": ("return conv2d.r_backward(dy, Rdy, (conv2d.im2col(x, stride), W, x.shape, stride), "
                          "(None if Rx is None else conv2d.im2col(Rx, stride), RW))"),
    "batchnorm_r_forward": "return batchnorm.r_forward(params, x, Rparams, Rx, cache)[0]",
    "batchnorm_r_backward": "return batchnorm.r_backward(dy, Rdy, cache, batchnorm.r_forward(None, None, Rparams, Rx, cache)[1])",
    "meta_gradient_per_tensor": "return maml.meta_gradient(model, theta, batch, alpha, K).grad",
    "lslr_alpha_gradient": "return maml.meta_gradient(model, theta, batch, alpha, K).dJ_dalpha",
}
MIN_QUESTIONS = 2
STUB_LINE = "raise NotImplementedError()"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
NOTEBOOK_NAMES = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))


def expected_exercises(name):
    """The exercise table's entry."""
    return EXERCISES[name]


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
    sources = NOTEBOOK_NAMES
    assert sorted(p.name for p in out.glob("*.ipynb")) == sources
    for name in sources:
        assert name in stdout
    for names in EXERCISES.values():
        for exercise in names:
            assert exercise in stdout
    assert "hidden tests removed" in stdout and "written answers" in stdout
    total = sum(len(expected_exercises(name)) for name in sources)
    answers = sum(len(assignments.answer_cells(assignments.read_notebook(TUTORIALS / n))) for n in sources)
    assert f"total: {total} exercises and {answers} written answers" in stdout


def test_source_notebooks_hold_the_expected_exercises():
    assert NOTEBOOK_NAMES == sorted(EXERCISES)
    for name in NOTEBOOK_NAMES:
        nb = assignments.read_notebook(TUTORIALS / name)
        assert [n for _, n in assignments.graded_cells(nb)] == expected_exercises(name), name
    assert sum(map(len, EXERCISES.values())) >= 8
    assert set(BYPASS) == {e for names in EXERCISES.values() for e in names}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_notebook_asks_written_questions_in_nbgraders_convention(name):
    """At least two questions per notebook, each answered in a Markdown cell that nbgrader grades
    by hand, with a model answer between the solution markers."""
    nb = assignments.read_notebook(TUTORIALS / name)
    answers = assignments.answer_cells(nb)
    assert len(answers) >= MIN_QUESTIONS, f"{name}: {len(answers)} written questions"
    ids = [assignments.nbgrader_metadata(c).get("grade_id") for c in nb["cells"] if assignments.nbgrader_metadata(c)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate grade_ids {ids}"
    for i, grade_id in answers:
        cell = nb["cells"][i]
        meta = assignments.nbgrader_metadata(cell)
        assert meta["solution"] is True and meta["grade"] is True and meta["task"] is False, (name, grade_id)
        assert meta["points"] > 0 and meta.get("locked") is False, (name, grade_id)
        assert len(assignments.solution_regions(assignments.cell_source(cell))) == 1, \
            f"{name}, {grade_id}: the model answer must sit in one solution region"
        question = assignments.cell_source(nb["cells"][i - 1])
        assert nb["cells"][i - 1]["cell_type"] == "markdown" and question.startswith("**Question"), (name, grade_id)


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
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

    assert [n for _, n in assignments.graded_cells(student)] == expected_exercises(name)
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


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_student_notebook_holds_no_model_answer(made, name):
    out, _ = made
    source = assignments.read_notebook(TUTORIALS / name)
    student = assignments.read_notebook(out / name)
    assert len(student["cells"]) == len(source["cells"])
    elsewhere = {line.strip() for i, cell in enumerate(source["cells"])
                 if not assignments.answer_name(cell) for line in assignments.cell_source(cell).splitlines()}
    for i, grade_id in assignments.answer_cells(source):
        mine = assignments.cell_source(student["cells"][i])
        assert assignments.answer_name(student["cells"][i]) == grade_id
        assert "YOUR ANSWER HERE" in mine, f"{name}, {grade_id}: no answer stub"
        model = [line.strip() for _, body in assignments.solution_regions(assignments.cell_source(source["cells"][i]))
                 for line in body if line.strip() and line.strip() not in elsewhere]
        assert model, f"{name}, {grade_id}: empty model answer"
        leaked = [line for line in model if line in mine]
        assert not leaked, f"{name}, {grade_id}: model answer in the student version: {leaked}"
        restored = assignments.insert_solutions(mine, assignments.solution_regions(
            assignments.cell_source(source["cells"][i])), stub=assignments.TEXT_STUB)
        assert restored == assignments.cell_source(source["cells"][i])       # only the answer was removed


@pytest.mark.parametrize("name", sorted(n for n, exercises in EXERCISES.items() if exercises))
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


@pytest.mark.parametrize("name", sorted(n for n, exercises in EXERCISES.items() if exercises))
def test_a_solution_that_only_calls_the_package_fails(made, name):
    """Each exercise's solution replaced by a call of the package's own implementation (BYPASS):
    every graded cell must fail, because it switches that implementation off while it runs."""
    out, _ = made
    student = assignments.read_notebook(out / name)
    exercises = [n for _, n in assignments.graded_cells(student)]
    k = 0
    for cell in student["cells"]:
        if cell["cell_type"] == "code" and STUB_LINE in assignments.cell_source(cell):
            text = assignments.cell_source(cell)
            indent = next(line for line in text.splitlines() if line.strip() == STUB_LINE)
            indent = indent[:len(indent) - len(indent.lstrip())]
            cell["source"] = assignments.insert_solutions(text, [(indent, [indent + BYPASS[exercises[k]]])])
            k += 1
    assert k == len(exercises), f"{name}: {k} solution regions for {len(exercises)} exercises"
    errors = execute(student, until_last_graded=True)
    graded = dict(assignments.graded_cells(student))
    for i, exercise in graded.items():
        assert errors[i] is not None, f"{name}: {exercise!r} passed with a solution that only calls the package"
    assert all(e is None for i, e in errors.items() if i not in graded), errors


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
    assert main(["assignments", "make", str(tmp_path / "out"), "--source", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assignments.write_notebook(notebook("x = 1"), tmp_path / "a.ipynb")
    assert main(["assignments", "make", str(tmp_path), "--source", str(tmp_path)]) == 2
    assert "must differ" in capsys.readouterr().err
    assert (tmp_path / "a.ipynb").is_file()


def test_default_source_is_the_repositorys_tutorials():
    assert assignments.DEFAULT_SOURCE == TUTORIALS


def answer_cell(text, grade_id="q1", **meta):
    return {"cell_type": "markdown", "source": text, "metadata": {"nbgrader": {
        "solution": True, "grade": True, "points": 1, "grade_id": grade_id, "task": False, "locked": False, **meta}}}


def test_written_answers_become_nbgraders_text_stub():
    nb = notebook("x = 1")
    nb["cells"] += [answer_cell("**Your answer:**\n\n### BEGIN SOLUTION\nbecause H is symmetric\n### END SOLUTION", "q1"),
                    answer_cell("the whole cell is the answer", "q2"),
                    {"cell_type": "markdown", "source": "plain text", "metadata": {}}]
    student, summary = assignments.student_notebook(nb, "toy.ipynb")
    assert assignments.cell_source(student["cells"][1]) == "**Your answer:**\n\nYOUR ANSWER HERE"
    assert assignments.cell_source(student["cells"][2]) == "YOUR ANSWER HERE"
    assert assignments.cell_source(student["cells"][3]) == "plain text"
    assert (summary.answers, summary.answers_replaced) == (["q1", "q2"], 2)
    assert "2 written answers" in assignments.format_summary([summary])


def test_markdown_solution_outside_an_answer_cell_and_duplicate_answers_are_refused():
    nb = notebook("x = 1")
    nb["cells"].append({"cell_type": "markdown", "metadata": {},
                        "source": "### BEGIN SOLUTION\nsecret\n### END SOLUTION"})
    with pytest.raises(AssignmentError, match="not a written answer"):
        assignments.student_notebook(nb, "toy.ipynb")
    nb = notebook("x = 1")
    nb["cells"] += [answer_cell("a", "q"), answer_cell("b", "q")]
    with pytest.raises(AssignmentError, match="more than one written answer"):
        assignments.student_notebook(nb, "toy.ipynb")


def test_a_solution_cell_without_a_region_becomes_the_stub_as_a_whole():
    nb = notebook("def f():\n    return 1")
    nb["cells"][0]["metadata"] = {"nbgrader": {"solution": True, "grade": False, "grade_id": "f"}}
    student, summary = assignments.student_notebook(nb, "toy.ipynb")
    assert assignments.cell_source(student["cells"][0]) == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert summary.solutions_replaced == 1


def test_make_never_overwrites_a_notebook_that_is_not_its_own(tmp_path, capsys):
    """A second make into its own folder needs --force, which replaces only the notebooks make
    wrote and nobody changed (their SHA-256 in .assignments.json); an edited notebook is
    refused even with --force, and nothing is written. A folder make did not make is refused."""
    from numpy_amaml.cli import main
    source, out = tmp_path / "source", tmp_path / "student"
    source.mkdir()
    for name in ("a.ipynb", "b.ipynb"):
        assignments.write_notebook(notebook("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION"), source / name)
    make = ["assignments", "make", str(out), "--source", str(source)]
    assert main(make) == 0
    assert sorted(p.name for p in out.iterdir()) == [".assignments.json", "a.ipynb", "b.ipynb"]
    capsys.readouterr()

    assert main(make) == 2
    assert "already holds a.ipynb, b.ipynb; pass --force" in capsys.readouterr().err
    assert main([*make, "--force"]) == 0                       # unchanged: replaced
    capsys.readouterr()

    edited = (out / "b.ipynb").read_text().replace("raise NotImplementedError()", "y = 2")
    (out / "b.ipynb").write_text(edited)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*make, "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "b.ipynb in" in err and "changed since `assignments make` wrote them" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    theirs = tmp_path / "course"
    theirs.mkdir()
    (theirs / "syllabus.md").write_text("week 1")
    assert main(["assignments", "make", str(theirs), "--source", str(source)]) == 2
    assert "is not empty and was not made by `assignments make` (it holds syllabus.md)" in capsys.readouterr().err
    assert main(["assignments", "make", str(theirs), "--source", str(source), "--force"]) == 0
    assert (theirs / "syllabus.md").read_text() == "week 1" and (theirs / "a.ipynb").is_file()

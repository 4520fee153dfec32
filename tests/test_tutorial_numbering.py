"""The exercises and questions of the tutorials: one numbering per notebook, points shown, and the
tables and counts that list them.

In notebook NN (tutorials/NN_*.ipynb, every one present, a new one included), exercises and
questions share one counter: the k-th of them in order of appearance is "Exercise N.k" (a Markdown
line ``## Exercise N.k ...``) or "Question N.k" (a Markdown cell that opens ``**Question N.k**``),
N the notebook's number. Each shows its points, "(p point[s])", and they are the nbgrader points of
its cell: the graded cell that follows the exercise's heading (before the next exercise), the
answer cell right after the question. Every mention of an exercise or a question by its label, in
the notebooks, the READMEs, docs/ and tests/grader_mutants/, names one that exists, of that kind.
tutorials/README.md lists every notebook, and its exercise table lists, per notebook, exactly the
graded exercises (label, name and points) and the questions (label and points); README.md lists
every notebook and counts the exercises and written questions right.
"""
import re
from pathlib import Path

import pytest

from numpy_amaml.commands import assignments

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
EXERCISE_LINE = re.compile(r"^#+\s*Exercise\b")                 # any heading line that names an exercise
EXERCISE_HEADING = re.compile(r"^## Exercise (\d+)\.(\d+) ")
QUESTION_HEADING = re.compile(r"^\*\*Question (\d+)\.(\d+)\*\* \((\d+) (points?)\)")
POINTS = re.compile(r"\((\d+) (points?)\)")
# a mention: "Exercise 1.2", "question 4.4", "Questions 4.1, 4.4 and 4.5", "Questions 7.2–7.3", "Q2.3"
MENTION = re.compile(r"\b(exercise|question)s? (\d+\.\d+(?:(?:,? and |, | ?[–-] ?)\d+\.\d+)*)", re.IGNORECASE)
SHORT_QUESTION = re.compile(r"\bQ(\d+)\.(\d+)\b")
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen").split()
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}


def number(path):
    """The notebook's number: 7 for tutorials/07_curvature.ipynb."""
    return int(path.name[:2])


def labelled(path):
    """The exercises and questions of a notebook in order: dicts with kind ("Exercise" or
    "Question"), n, k, the points shown, the word used ("point"/"points") and the cell index."""
    nb = assignments.read_notebook(path)
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = assignments.cell_source(cell)
        for line in text.splitlines():
            if EXERCISE_LINE.match(line):
                heading = EXERCISE_HEADING.match(line)
                points = POINTS.search(line)
                assert heading and points, f"{path.name}, cell {i}: exercise heading not '## Exercise N.k ... (p points)': {line!r}"
                found.append({"kind": "Exercise", "n": int(heading[1]), "k": int(heading[2]),
                              "points": int(points[1]), "word": points[2], "cell": i})
        if text.startswith("**Question"):
            heading = QUESTION_HEADING.match(text)
            assert heading, f"{path.name}, cell {i}: question not '**Question N.k** (p points)': {text[:60]!r}"
            found.append({"kind": "Question", "n": int(heading[1]), "k": int(heading[2]),
                          "points": int(heading[3]), "word": heading[4], "cell": i})
    return nb, found


def all_labels():
    """{(kind, n, k)} of every exercise and question of every notebook."""
    return {(item["kind"], item["n"], item["k"]) for path in NOTEBOOKS for item in labelled(path)[1]}


def points_of(nb, index):
    return assignments.nbgrader_metadata(nb["cells"][index])["points"]


def count(word):
    """A number written in words ("eighteen", "twenty-one") as an int."""
    word = word.lower()
    if word in NUMBER_WORDS:
        return NUMBER_WORDS.index(word)
    tens, _, unit = word.partition("-")
    assert tens in TENS and (not unit or unit in NUMBER_WORDS[1:10]), f"not a number: {word!r}"
    return TENS[tens] + (NUMBER_WORDS.index(unit) if unit else 0)


def test_the_tutorials_are_found():
    assert len(NOTEBOOKS) >= 8 and len({number(p) for p in NOTEBOOKS}) == len(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_one_shared_counter_with_the_notebooks_number(path):
    _, found = labelled(path)
    assert found, f"{path.name}: no exercise and no question"
    labels = [f"{item['kind']} {item['n']}.{item['k']}" for item in found]
    assert all(item["n"] == number(path) for item in found), f"{path.name}: labels {labels} must use {number(path)}"
    assert [item["k"] for item in found] == list(range(1, len(found) + 1)), \
        f"{path.name}: exercises and questions must be counted 1, 2, 3, ... together, in order: {labels}"
    for item in found:
        assert item["points"] > 0 and (item["word"] == "point") == (item["points"] == 1), \
            f"{path.name}: {item['kind']} {item['n']}.{item['k']} shows '({item['points']} {item['word']})'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_shown_points_are_the_nbgrader_points(path):
    nb, found = labelled(path)
    exercises = [item for item in found if item["kind"] == "Exercise"]
    graded = assignments.graded_cells(nb)
    assert len(exercises) == len(graded), \
        f"{path.name}: {len(exercises)} exercise headings for the graded cells {[name for _, name in graded]}"
    after = [item["cell"] for item in exercises[1:]] + [len(nb["cells"])]
    for item, (index, name), next_heading in zip(exercises, graded, after):
        assert item["cell"] < index < next_heading, \
            f"{path.name}: graded cell {name!r} (cell {index}) is not the one of Exercise {item['n']}.{item['k']}"
        assert item["points"] == points_of(nb, index), \
            f"{path.name}: Exercise {item['n']}.{item['k']} shows {item['points']} points, its graded cell gives {points_of(nb, index)}"

    questions = [item for item in found if item["kind"] == "Question"]
    answers = assignments.answer_cells(nb)
    assert [item["cell"] + 1 for item in questions] == [index for index, _ in answers], \
        f"{path.name}: every question must be followed by its answer cell, and every answer cell follow a question"
    for item, (index, grade_id) in zip(questions, answers):
        assert item["points"] == points_of(nb, index), \
            f"{path.name}: Question {item['n']}.{item['k']} shows {item['points']} points, its answer cell {grade_id!r} gives {points_of(nb, index)}"


def texts():
    """(where, text) of every place that may mention an exercise or a question by its label."""
    for path in NOTEBOOKS:
        for i, cell in enumerate(assignments.read_notebook(path)["cells"]):
            yield f"{path.name}, cell {i}", assignments.cell_source(cell)
    for path in [REPO / "README.md", TUTORIALS / "README.md", *sorted((REPO / "docs").rglob("*.md")),
                 *sorted((REPO / "tests" / "grader_mutants").glob("*.py"))]:
        yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")


def mentioned(text):
    """[(kind, n, k, the words)] of the labels mentioned in ``text``; a range "N.a–N.b" stands for every label in it."""
    found = []
    for match in MENTION.finditer(text):
        kind = match[1].capitalize()
        parts = re.split(r"(,? and |, | ?[–-] ?)", match[2])
        labels = [tuple(map(int, part.split("."))) for part in parts[::2]]
        separators = parts[1::2]
        for j, (n, k) in enumerate(labels):
            found.append((kind, n, k, match[0]))
            if j < len(separators) and separators[j].strip() in "–-":
                found += [(kind, n, between, match[0]) for between in range(k + 1, labels[j + 1][1])]
    found += [("Question", int(m[1]), int(m[2]), m[0]) for m in SHORT_QUESTION.finditer(text)]
    return found


def test_every_mention_names_an_existing_exercise_or_question():
    labels = all_labels()
    wrong = [f"{where}: {words!r} ({kind} {n}.{k} does not exist)"
             for where, text in texts() for kind, n, k, words in mentioned(text) if (kind, n, k) not in labels]
    assert not wrong, "\n".join(wrong)


def exercise_table():
    """tutorials/README.md's exercise table: {"NN": (exercises cell, questions cell)}."""
    lines = (TUTORIALS / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| notebook | exercises"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3 and cells[0] not in rows, f"tutorials/README.md, exercise table: {line!r}"
        rows[cells[0]] = cells[1:]
    return rows


def test_exercise_table_lists_the_notebooks_exercises_and_questions():
    rows = exercise_table()
    assert sorted(rows) == [path.name[:2] for path in NOTEBOOKS], "tutorials/README.md: one row per notebook"
    for path in NOTEBOOKS:
        nb, found = labelled(path)
        graded = assignments.graded_cells(nb)
        exercises_cell, questions_cell = rows[path.name[:2]]
        want = [(item["n"], item["k"], name, points_of(nb, index))
                for item, (index, name) in zip([i for i in found if i["kind"] == "Exercise"], graded)]
        listed = []
        if exercises_cell != "—":
            for entry in exercises_cell.split("; "):
                match = re.fullmatch(r"(\d+)\.(\d+) `(\w+)` — .+ \((\d+)\)", entry)
                assert match, f"tutorials/README.md, row {path.name[:2]}: not 'N.k `name` — what (points)': {entry!r}"
                listed.append((int(match[1]), int(match[2]), match[3], int(match[4])))
        assert listed == want, f"tutorials/README.md, row {path.name[:2]}: exercises {listed}, the notebook has {want}"

        want = [(item["n"], item["k"], item["points"]) for item in found if item["kind"] == "Question"]
        listed = []
        for entry in questions_cell.split("; "):
            match = re.fullmatch(r"(\d+)\.(\d+) .+ \((\d+)\)", entry)
            assert match, f"tutorials/README.md, row {path.name[:2]}: not 'N.k what (points)': {entry!r}"
            listed.append(tuple(map(int, match.groups())))
        assert listed == want, f"tutorials/README.md, row {path.name[:2]}: questions {listed}, the notebook has {want}"


def test_readmes_list_every_notebook_and_count_the_exercises_and_questions():
    tutorials_readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f"| [{path.stem}]({path.name}) |" in tutorials_readme, f"tutorials/README.md: no row for {path.name}"
        assert f"`{path.stem}` —" in readme, f"README.md, Learn: no entry for {path.stem}"
    claim = re.search(r"The notebooks hold ([\w-]+) exercises and ([\w-]+) written questions", readme)
    assert claim, "README.md, For instructors: the sentence that counts the exercises and questions is missing"
    exercises = sum(len(assignments.graded_cells(assignments.read_notebook(p))) for p in NOTEBOOKS)
    questions = sum(len(assignments.answer_cells(assignments.read_notebook(p))) for p in NOTEBOOKS)
    assert (count(claim[1]), count(claim[2])) == (exercises, questions), \
        f"README.md says {claim[1]} exercises and {claim[2]} written questions; the notebooks hold {exercises} and {questions}"

"""Classroom assignments from the tutorial notebooks (nbgrader's conventions, nbgrader optional).

A source notebook in ``tutorials/`` is the instructor's version: it runs top to bottom with
the reference solutions and model answers in place. Four markers make it an assignment:

* a solution region in a code cell: the lines between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``. In the student version the region (markers included) becomes, at
  the indentation of the ``### BEGIN SOLUTION`` line::

      # YOUR CODE HERE
      raise NotImplementedError()

* a written answer: a Markdown cell with nbgrader's metadata of a manually graded answer,
  ``{"solution": true, "grade": true, "points": n, "grade_id": ..., "task": false}``. The
  model answer sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` in it; the student
  version replaces that region by ``YOUR ANSWER HERE`` (at the region's indentation), or the
  whole cell when it has no region — exactly what ``nbgrader generate_assignment`` does.
* a hidden-test region: the lines between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS``; the student version drops them (markers included).
* a graded cell: a code cell whose first line is ``# GRADED: <exercise name>``; it holds the
  assertions that check the student's function (against finite differences or the package).

These are nbgrader's own markers, and the source notebooks also carry nbgrader's cell
metadata, so ``nbgrader generate_assignment`` / ``autograde`` work on them too (see
tutorials/README.md); the student versions written here have the same cell sources as
nbgrader's release (tests/test_nbgrader.py compares them). This module needs nothing beyond
the standard library (a notebook is JSON).

Command line::

    python -m numpy_amaml assignments make OUT_DIR [--source tutorials] [--force]

writes the student version of every ``*.ipynb`` in the source folder to OUT_DIR (outputs
cleared) and prints, per notebook, the exercises, written answers, solution regions and
hidden tests removed.

It never overwrites what is not its own. OUT_DIR must be new, empty, or a folder it made
before; a notebook already there is replaced only with ``--force``, and only if nobody has
changed it: ``make`` records the SHA-256 of every notebook it writes in OUT_DIR/.assignments.json
(``MANIFEST``), and a notebook whose bytes differ from that record (a student's or
instructor's edits), or that it never wrote, is refused, even with ``--force``.
"""
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from numpy_amaml.files import write_text

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEXT_STUB = ("YOUR ANSWER HERE",)     # nbgrader's ClearSolutions.text_stub
GRADED_PREFIX = "# GRADED:"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "tutorials"     # the repository's tutorials/
MANIFEST = ".assignments.json"     # in OUT_DIR: {"notebooks": {name: SHA-256 of the bytes make wrote}}
_GRADED = re.compile(r"^# GRADED:\s*(\S.*?)\s*$")


class AssignmentError(ValueError):
    """A source notebook's markers are malformed (unbalanced, nested, misplaced), or the
    folders are wrong: a missing source, an OUT_DIR that is not make's own."""


@dataclass
class Summary:
    """What making the student version of one notebook did."""
    notebook: str
    exercises: list          # names of the graded cells, in order
    solutions_replaced: int  # solution regions of code cells replaced by the stub
    hidden_tests_removed: int
    answers: list = None     # grade_ids of the written (manually graded) answers, in order
    answers_replaced: int = 0  # model answers replaced by "YOUR ANSWER HERE"


# ---- notebooks as JSON ------------------------------------------------------------------

def read_notebook(path):
    """The notebook at ``path`` as a dict (nbformat 4 JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except ValueError as err:         # not JSON, or not UTF-8
        raise AssignmentError(f"{path}: not a notebook ({err})") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise AssignmentError(f"{path}: not an nbformat-4 notebook")
    return nb


def notebook_text(nb):
    """``nb`` as nbformat writes it (1-space indent, sorted keys, trailing newline)."""
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def write_notebook(nb, path):
    """Write ``nb`` as nbformat does (UTF-8), atomically (numpy_amaml.files)."""
    write_text(path, notebook_text(nb))


def cell_source(cell):
    """A cell's source as one string (the JSON may hold a string or a list of lines)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell, text):
    cell["source"] = text.splitlines(keepends=True)


def clear_outputs(nb):
    """Drop every code cell's outputs and execution count, in place; returns ``nb``."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


# ---- markers ------------------------------------------------------------------------------

def graded_name(cell):
    """The exercise name of a graded cell (first line ``# GRADED: name``), else None."""
    if cell["cell_type"] != "code":
        return None
    lines = cell_source(cell).lstrip("\n").splitlines()
    match = _GRADED.match(lines[0].strip()) if lines else None
    return match.group(1) if match else None


def nbgrader_metadata(cell):
    """The cell's nbgrader metadata (a dict, empty when it has none)."""
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def answer_name(cell):
    """The grade_id of a written answer (a Markdown cell marked as a manually graded
    solution in nbgrader's metadata), else None."""
    meta = nbgrader_metadata(cell)
    if cell["cell_type"] == "markdown" and meta.get("solution") and meta.get("grade"):
        return meta.get("grade_id") or "(no grade_id)"
    return None


def answer_cells(nb):
    """[(cell index, grade_id)] of the written answers, in notebook order."""
    return [(i, name) for i, cell in enumerate(nb["cells"]) if (name := answer_name(cell))]


def graded_cells(nb):
    """[(cell index, exercise name)] of the graded cells, in notebook order."""
    return [(i, name) for i, cell in enumerate(nb["cells"]) if (name := graded_name(cell))]


def _regions(text, begin, end, where):
    """[(first line, last line)] (inclusive, 0-based) of the begin/end regions of ``text``."""
    regions, start = [], None
    for n, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped == begin:
            if start is not None:
                raise AssignmentError(f"{where}: line {n + 1}: {begin!r} inside another region")
            start = n
        elif stripped == end:
            if start is None:
                raise AssignmentError(f"{where}: line {n + 1}: {end!r} without {begin!r}")
            regions.append((start, n))
            start = None
    if start is not None:
        raise AssignmentError(f"{where}: line {start + 1}: {begin!r} is never closed by {end!r}")
    return regions


def solution_regions(text, where="cell"):
    """The solution regions of a cell's source: [(indentation, [lines between the markers])]."""
    lines = text.splitlines()
    return [(_indent(lines[a]), lines[a + 1:b]) for a, b in _regions(text, BEGIN_SOLUTION, END_SOLUTION, where)]


def _indent(line):
    return line[:len(line) - len(line.lstrip())]


def _replace_regions(text, begin, end, where, replacement):
    """Replace each begin..end region (markers included) by ``replacement(indent)`` lines."""
    lines = text.splitlines()
    regions = _regions(text, begin, end, where)
    out, pos = [], 0
    for a, b in regions:
        out += lines[pos:a] + replacement(_indent(lines[a]))
        pos = b + 1
    out += lines[pos:]
    return "\n".join(out) + ("\n" if text.endswith("\n") and out else ""), len(regions)


def strip_solutions(text, where="cell", stub=STUB):
    """Replace every solution region by ``stub`` (default: ``# YOUR CODE HERE`` +
    ``raise NotImplementedError()``; ``TEXT_STUB`` for Markdown), at the region's indentation.
    Returns (new text, number of regions replaced)."""
    return _replace_regions(text, BEGIN_SOLUTION, END_SOLUTION, where,
                            lambda indent: [indent + line for line in stub])


def strip_hidden_tests(text, where="cell"):
    """Remove every hidden-test region. Returns (new text, number of regions removed)."""
    return _replace_regions(text, BEGIN_HIDDEN, END_HIDDEN, where, lambda indent: [])


def insert_solutions(student_text, regions, where="cell", stub=STUB):
    """The inverse of ``strip_solutions``: put ``regions`` (from ``solution_regions`` of the
    source cell, in order) back in place of the stubs. Used to prove the round trip."""
    lines, out, k = student_text.splitlines(), [], 0
    i, n = 0, len(stub)
    while i < len(lines):
        if [line.strip() for line in lines[i:i + n]] == list(stub):
            if k >= len(regions):
                raise AssignmentError(f"{where}: more stubs than solution regions")
            indent, body = regions[k]
            out += [indent + BEGIN_SOLUTION, *body, indent + END_SOLUTION]
            k, i = k + 1, i + n
        else:
            out.append(lines[i])
            i += 1
    if k != len(regions):
        raise AssignmentError(f"{where}: {len(regions)} solution regions but {k} stubs")
    return "\n".join(out) + ("\n" if student_text.endswith("\n") else "")


# ---- the student version ----------------------------------------------------------------------

def student_notebook(nb, name="notebook"):
    """The student version of ``nb`` (a new dict) and its ``Summary``.

    Code cells: solution regions -> stub, hidden-test regions removed. Markdown cells:
    in a written answer the model answer (its solution region, or the whole cell when it
    has none) -> ``YOUR ANSWER HERE``; other Markdown cells are copied as they are. A code
    cell marked as a solution in nbgrader's metadata but without a region becomes the stub
    as a whole (as nbgrader does). Every cell: outputs cleared. Raises ``AssignmentError``
    for malformed markers, duplicate exercise or answer names, a graded cell holding a
    solution, or a solution region in a Markdown cell that is not a written answer.
    """
    out = json.loads(json.dumps(nb))          # a deep copy
    names = [n for _, n in graded_cells(out)]
    answers = [n for _, n in answer_cells(out)]
    for kind, found in (("exercise names used by more than one graded cell", names),
                        ("grade_ids used by more than one written answer", answers)):
        duplicates = sorted({n for n in found if found.count(n) > 1})
        if duplicates:
            raise AssignmentError(f"{name}: {kind}: {duplicates}")
    replaced = removed = answers_replaced = 0
    for i, cell in enumerate(out["cells"]):
        where = f"{name}, cell {i}"
        text = cell_source(cell)
        if cell["cell_type"] == "markdown":
            n_regions = len(_regions(text, BEGIN_SOLUTION, END_SOLUTION, where))
            if answer_name(cell):
                text, n = strip_solutions(text, where, stub=TEXT_STUB)
                if n == 0:                    # no region: the whole cell is the answer
                    text = "\n".join(TEXT_STUB)
                answers_replaced += 1
            elif n_regions:
                raise AssignmentError(f"{where}: a solution region in a Markdown cell that is not "
                                      f"a written answer (nbgrader metadata solution and grade)")
            _set_source(cell, text)
            continue
        if cell["cell_type"] != "code":
            continue
        text, n_hidden = strip_hidden_tests(text, where)
        text, n_solutions = strip_solutions(text, where)
        if n_solutions and graded_name(cell):
            raise AssignmentError(f"{where}: a graded cell must not hold a solution region")
        if not n_solutions and nbgrader_metadata(cell).get("solution"):
            text, n_solutions = "\n".join(STUB), 1      # a solution cell without a region
        replaced, removed = replaced + n_solutions, removed + n_hidden
        _set_source(cell, text)
    clear_outputs(out)
    return out, Summary(name, names, replaced, removed, answers, answers_replaced)


def file_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(out_dir):
    """{notebook name: SHA-256} of the notebooks make wrote into ``out_dir`` (None: no manifest)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        notebooks = json.loads(path.read_text(encoding="utf-8"))["notebooks"]
        if not isinstance(notebooks, dict):
            raise TypeError("not an object")
        return notebooks
    except (ValueError, KeyError, TypeError) as err:
        raise AssignmentError(f"{path} is damaged ({err}); delete it, and then make refuses to replace "
                              f"any notebook in {out_dir}") from None


def check_out_dir(out_dir, names, force):
    """The manifest of ``out_dir`` (a dict) if ``names`` may be written there, else AssignmentError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise AssignmentError(f"OUT_DIR {out_dir} is a file, not a folder")
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    manifest = read_manifest(out_dir)
    clashes = [name for name in names if name in present]
    if present and not force:
        if clashes:
            raise AssignmentError(f"{out_dir} already holds {', '.join(clashes)}; pass --force to replace "
                                  f"those that make wrote and nobody has changed since")
        if manifest is None:
            raise AssignmentError(f"{out_dir} is not empty and was not made by `assignments make` (it holds "
                                  f"{', '.join(present[:3])}{', ...' if len(present) > 3 else ''}); choose a "
                                  f"new or empty folder, or pass --force to add the notebooks to it")
    changed = [name for name in clashes if (manifest or {}).get(name) != file_hash(out_dir / name)]
    if changed:
        raise AssignmentError(f"{', '.join(changed)} in {out_dir} changed since `assignments make` wrote them "
                              f"(or it never did); they are never replaced: move them away first")
    return manifest or {}


def make_student_versions(source_dir, out_dir, force=False):
    """Write the student version of every ``*.ipynb`` in ``source_dir`` into ``out_dir``.

    ``out_dir`` must be new, empty or made by this function (``check_out_dir``); with
    ``force``, notebooks it wrote before and nobody changed are replaced. Everything is
    checked before the first write; then each notebook is written atomically and recorded
    in the manifest at once. Returns the list of ``Summary``, one per notebook, in file-name
    order. Raises AssignmentError for every mistake of the caller, OSError if a write fails.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise AssignmentError(f"source folder {source_dir} does not exist")
    paths = sorted(source_dir.glob("*.ipynb"))
    if not paths:
        raise AssignmentError(f"no .ipynb notebooks in {source_dir}")
    if out_dir.resolve() == source_dir.resolve():
        raise AssignmentError("OUT_DIR must differ from the source folder "
                              "(the student versions would overwrite the solutions)")
    versions = [student_notebook(read_notebook(p), p.name) for p in paths]   # all checked first
    manifest = check_out_dir(out_dir, [p.name for p in paths], force)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, (nb, _) in zip(paths, versions):
        text = notebook_text(nb)
        write_text(out_dir / path.name, text)
        manifest[path.name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        write_text(out_dir / MANIFEST, json.dumps({"notebooks": manifest}, indent=1, sort_keys=True) + "\n")
    return [summary for _, summary in versions]


def format_summary(summaries):
    """A plain-text table of ``Summary`` rows, with a total line."""
    rows = [(s.notebook, str(len(s.exercises)), str(len(s.answers or [])), str(s.solutions_replaced),
             str(s.hidden_tests_removed), ", ".join(s.exercises) or "-") for s in summaries]
    header = ("notebook", "exercises", "written answers", "solutions replaced", "hidden tests removed",
              "graded cells")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(5)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:5], widths)) + "  " + header[5]]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:5], widths)) + "  " + r[5])
    lines.append(f"total: {sum(len(s.exercises) for s in summaries)} exercises and "
                 f"{sum(len(s.answers or []) for s in summaries)} written answers in {len(summaries)} notebooks")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------

def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = sub.add_parser("make", help="write the student version of every tutorial notebook",
                          description="Write the student version of every notebook: solution "
                                      "regions replaced by `raise NotImplementedError()`, model "
                                      "answers by `YOUR ANSWER HERE`, hidden tests removed, "
                                      "outputs cleared.")
    make.add_argument("out_dir", metavar="OUT_DIR", help="folder for the student notebooks (created)")
    make.add_argument("--source", default=None,
                      help=f"folder of the instructor notebooks (default: {DEFAULT_SOURCE})")
    make.add_argument("--force", action="store_true",
                      help="replace notebooks a previous make wrote into OUT_DIR (never one changed since)")


def run(args):
    source = Path(args.source) if args.source else DEFAULT_SOURCE
    try:
        summaries = make_student_versions(source, args.out_dir, force=args.force)
    except AssignmentError as err:
        print(f"error: assignments: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = err.filename or args.out_dir
        print(f"error: assignments: cannot read or write {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(format_summary(summaries))
    print(f"student notebooks written to {args.out_dir}")
    return 0

"""The layout rules a maintainer relies on: the package root is the library, the commands are
thin and independent, modules stay small, and the method is documented inside the repository."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "numpy_amaml"
COMMANDS = PACKAGE / "commands"
MAX_LINES = 420


def imported_modules(path):
    """Every ``numpy_amaml...`` module a file imports (absolute imports, any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("numpy_amaml")}


def test_no_command_imports_another_command():
    commands = {f"numpy_amaml.commands.{p.stem}" for p in COMMANDS.glob("*.py") if p.stem != "__init__"}
    assert "numpy_amaml.commands.train" in commands
    for path in COMMANDS.glob("*.py"):
        others = imported_modules(path) & (commands - {f"numpy_amaml.commands.{path.stem}"})
        assert not others, f"{path.relative_to(REPO)} imports the command module(s) {sorted(others)}"


def test_the_library_never_imports_a_command():
    for path in PACKAGE.rglob("*.py"):
        if COMMANDS in path.parents or path.name in ("cli.py", "__main__.py"):
            continue
        commands = {m for m in imported_modules(path)
                    if m.startswith("numpy_amaml.commands") or m.startswith("numpy_amaml.cli")}
        assert not commands, f"{path.relative_to(REPO)} imports {sorted(commands)}"


def test_modules_are_small():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_method_citation_points_to_a_section_that_exists():
    """Code, tests, notebooks and docs cite docs/method.md by section (§N); each must exist,
    and no file cites a design document outside the repository."""
    method = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", method, flags=re.MULTILINE)}
    assert sections == set(range(1, max(sections) + 1)) and len(sections) >= 12
    files = [p for pattern in ("numpy_amaml/**/*.py", "tests/*.py", "tutorials/*.ipynb", "docs/*.md", "*.md")
             for p in REPO.glob(pattern)]
    cited = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"DESIGN(\.md| ?§)", text), f"{path.relative_to(REPO)} cites a design document"
        for citation in re.findall(r"method\.md\)?,? ?((?:§\d+(?:[–-]§?\d+)?(?:, )?)+)", text):
            for number in re.findall(r"\d+", citation):
                cited += 1
                assert int(number) in sections, f"{path.relative_to(REPO)} cites docs/method.md §{number}"
    assert cited >= 10

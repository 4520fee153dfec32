"""Time every tutorial notebook in quick and full mode: the timing table of tutorials/README.md.

    python tutorials/timing_table.py                       # every notebook, both modes
    python tutorials/timing_table.py --modes quick --notebooks 04 06

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient, working directory
tutorials/), as tests/test_tutorials.py runs it: with NUMPY_AMAML_QUICK=1 in quick mode, without
it in full mode. The script prints a Markdown table — per mode, the wall time of the whole
notebook and of its longest cell (nbclient's record of each cell's execution) — and a line naming
the machine, its load average before the runs and the date. A notebook that fails is reported in
the table as failed, with the cell, and the script exits with status 1.
"""
import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parent
MODES = {"quick": {"NUMPY_AMAML_QUICK": "1"}, "full": {}}
CELL_TIMEOUT = 3600          # seconds; a full-mode training cell takes minutes


def run_notebook(path, mode):
    """Execute ``path`` in ``mode``; returns (seconds, longest cell in seconds, error or None)."""
    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.pop("NUMPY_AMAML_QUICK", None)
    os.environ.pop("MPLBACKEND", None)           # the kernel's inline backend draws the figures
    os.environ.update(MODES[mode])
    error = None
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - start
    return seconds, longest_cell(nb), error


def longest_cell(nb):
    """The longest execution of one code cell, from the timestamps nbclient records in its metadata."""
    longest = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            began = datetime.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            ended = datetime.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            longest = max(longest, (ended - began).total_seconds())
    return longest


def duration(seconds):
    """'7 s', '35 s', '2.5 min'."""
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def machine():
    """The processor's name and core count, from /proc/cpuinfo where there is one."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        name = models[0] if models else name
    return f"{name}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--notebooks", nargs="+", metavar="NN",
                        help="notebook numbers (default: every notebook in tutorials/)")
    args = parser.parse_args(argv)
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    if args.notebooks:
        paths = [p for p in paths if p.name[:2] in args.notebooks]
        if not paths:
            print(f"error: no notebook numbered {' '.join(args.notebooks)} in {TUTORIALS}", file=sys.stderr)
            return 2
    load = os.getloadavg()
    rows, failed = [], False
    for path in paths:
        cells = []
        for mode in args.modes:
            print(f"{path.name}, {mode} mode ...", file=sys.stderr, flush=True)
            seconds, longest, error = run_notebook(path, mode)
            failed |= error is not None
            cells.append(f"failed: {error}" if error else f"{duration(seconds)} (longest cell {duration(longest)})")
        rows.append(f"| {path.name[:2]} | " + " | ".join(cells) + " |")
    print("| notebook | " + " | ".join(f"{mode} mode" for mode in args.modes) + " |")
    print("|---|" + "---|" * len(args.modes))
    print("\n".join(rows))
    print(f"\nMeasured by `python tutorials/timing_table.py` on {machine()}; load average "
          f"{load[0]:.1f} before the runs; {datetime.date.today().isoformat()}.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

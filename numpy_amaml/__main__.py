import os
import sys

try:
    from numpy_amaml.cli import main
except KeyboardInterrupt:       # Ctrl-C while NumPy and the package load: no command has started yet
    print(("\n" if sys.stderr.isatty() else "") + "interrupted: python -m numpy_amaml was still starting; "
          "nothing ran", file=sys.stderr)
    sys.exit(130)

try:
    sys.exit(main())
except BrokenPipeError:         # the reader of the output went away (`... | head`): not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)

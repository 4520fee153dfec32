import os
import sys

from numpy_amaml.cli import main

try:
    sys.exit(main())
except BrokenPipeError:         # the reader of the output went away (`... | head`): not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)

import sys

from numpy_amaml.cli import main

sys.exit(main())

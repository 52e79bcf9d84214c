"""`python -m training.cli`: the same as `fraud-train`."""

import sys

from training.cli.main import main

# Guarded: a spawned worker process imports this module again, as `__mp_main__`.
if __name__ == "__main__":
    sys.exit(main())

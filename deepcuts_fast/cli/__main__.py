"""`python -m deepcuts_fast.cli ...`: the `deepcuts` command without the installed console script."""
import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())

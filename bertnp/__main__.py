"""``python -m bertnp ...``: the same command line as ``bertnp ...`` (see bertnp/cli.py)."""
import sys

from bertnp.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m vqclip`: the command-line interface (see vqclip.cli)."""
import sys

from vqclip.cli import main

if __name__ == "__main__":
    sys.exit(main())

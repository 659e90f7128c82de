"""``python -m scenegrep``: the command-line interface."""

from scenegrep.cli import main

if __name__ == "__main__":
    main()

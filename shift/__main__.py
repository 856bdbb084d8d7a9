"""``python -m shift``: the CLI, reachable where no console script is on PATH."""

from shift.cli import main

if __name__ == "__main__":
    main()

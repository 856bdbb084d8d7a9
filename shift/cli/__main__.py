"""``python -m shift.cli``."""

from shift.cli import main

main()

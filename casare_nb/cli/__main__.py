"""``python -m casare_nb.cli``."""

from casare_nb.cli import main

main()

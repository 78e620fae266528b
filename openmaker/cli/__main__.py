"""`python -m openmaker.cli`."""

from openmaker.cli.app import main

main()

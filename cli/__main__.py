"""`python -m cli`: the same as the `brightrun` command."""

from cli.main import main

main()

"""`python -m sparkplane_cli`: the same as the `sparkplane` command."""

from sparkplane_cli.main import main

main()

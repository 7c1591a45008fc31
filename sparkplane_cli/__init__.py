"""The `sparkplane` command: the operator's CLI (`sparkplane_cli/main.py`)."""

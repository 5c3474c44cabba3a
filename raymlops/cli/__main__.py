"""``python -m raymlops.cli`` (what Ray job entrypoints run)."""

from raymlops.cli import main

main()

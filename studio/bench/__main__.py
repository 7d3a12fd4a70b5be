"""`python -m studio.bench NAME ...` is `python -m studio bench NAME ...`."""
import sys

from studio.__main__ import main

sys.exit(main(["bench", *sys.argv[1:]]))

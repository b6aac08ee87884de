"""`python -m cdkd.commands ...` = the installed `cdkd ...`."""
import sys

from . import main

sys.exit(main())

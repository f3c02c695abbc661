"""The fault tests: bad input is refused in one line with exit status 2, nothing a user made is lost or
clobbered, and nothing from a file is executed. One file per surface; every test here failed before its fix.

The helpers of the suite (`trained_run`, `registry_fakes`, ...) live one folder up."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

"""`python -m engine`: the engine's command line (tools/cli.py), run as a program.

The one module of engine/ that imports from a layer above it, and only to run it: the command ties the supervisor
(procs/), the soak tool (tools/) and the trace report together, and `python -m engine` is the name operators know.
"""

import sys

from tools.cli import main

if __name__ == "__main__":
    sys.exit(main())

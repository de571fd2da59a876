"""Pipeline entry point of the report stage; the logic lives in invprop.stages.report."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("report", sys.argv[1:]))

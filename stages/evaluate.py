"""Pipeline entry point of the evaluate stage; the logic lives in invprop.stages.evaluate."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("evaluate", sys.argv[1:]))

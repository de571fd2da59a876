"""Pipeline entry point of the graph stage; the logic lives in invprop.stages.graph."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("graph", sys.argv[1:]))

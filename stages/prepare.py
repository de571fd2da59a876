"""Pipeline entry point of the prepare stage; the logic lives in invprop.stages.prepare."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("prepare", sys.argv[1:]))

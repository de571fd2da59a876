"""Pipeline entry point of the propagate stage; the logic lives in invprop.stages.propagate."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("propagate", sys.argv[1:]))

"""Pipeline entry point of the embed stage; the logic lives in invprop.stages.embed."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("embed", sys.argv[1:]))

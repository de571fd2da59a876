"""Pipeline entry point of the transfer stage; the logic lives in invprop.stages.transfer."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("transfer", sys.argv[1:]))

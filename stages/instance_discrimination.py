"""Entry point of the instance_discrimination stage; the logic lives in invprop.baseline."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("instance_discrimination", sys.argv[1:]))

"""The instance_discrimination stage's entry point; see invprop.stages.instance_discrimination."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("instance_discrimination", sys.argv[1:]))

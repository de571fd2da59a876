"""Pipeline entry point of the pretrain stage; the logic lives in invprop.stages.pretrain."""

import sys

from invprop.pipeline import main

if __name__ == "__main__":
    sys.exit(main("pretrain", sys.argv[1:]))

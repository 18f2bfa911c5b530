#!/usr/bin/env python3
"""The command line of regcred_dev.image (usage in its docstring)."""

import sys

from regcred_dev.image import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The command line of regcred_dev.kubelet_rules (usage in its docstring)."""

import sys

from regcred_dev.kubelet_rules import main

if __name__ == "__main__":
    sys.exit(main())

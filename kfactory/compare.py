"""``python -m kfactory.compare DIR [DIR …]``: the documented name of :mod:`kfactory.report.compare`."""

import sys

from kfactory.report.compare import main

if __name__ == "__main__":
    sys.exit(main())

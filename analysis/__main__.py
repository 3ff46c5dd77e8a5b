"""``python -m analysis [--quick] [--out reports/latest] [--only NAME ...] [--seed 0]``.

Runs the reproductions listed in ``analysis.REPRODUCTIONS`` and writes the report; see
:mod:`analysis.report`. ``--quick`` is the reduced budget the tests use.
"""

from analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())

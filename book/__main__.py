"""``python -m book [--out build/book] [--only NAME ...] [--full] [--jobs N] [--report DIR]``.

Builds the curated notebooks, executed, as a static site; see :mod:`book.build`.
``make book`` runs it with the defaults.
"""

from book.build import main

if __name__ == "__main__":
    raise SystemExit(main())

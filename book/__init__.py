"""The notebooks as a book: ``make book`` (``python -m book``) builds ``build/book/``.

See :mod:`book.build` and docs/BOOK.md.
"""

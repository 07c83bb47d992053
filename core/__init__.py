"""Pure building blocks shared by the actors: wire format, settings, flows, errors.

Nothing here does network I/O or imports trio; the lifecycles live in ``machines/`` and the
I/O in ``actors/``.
"""

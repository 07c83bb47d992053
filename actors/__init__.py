"""Trio actors: the I/O side of quiesce.

Each actor owns one machine from ``machines/`` and is the only code that sends it events:
``ImportActor`` and ``ExportActor`` (one per WebSocket, ``importer.py`` / ``exporter.py``)
with their ``Publisher`` and ``Subscriber``; the broker (``open_broker``); the HTTP front.
"""

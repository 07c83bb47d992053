"""The ``quiesce import`` and ``quiesce export`` clients: load and dump knowledge through a gateway.

``cli.py`` declares the commands; ``importer.py`` (with the pure ``ledger.py``, ``sources.py``,
``rdf.py`` and ``state.py``) sends inputs with receipts, resends and resume; ``exporter.py``
(with ``writers.py``) writes an ``ack=client`` export durably before acking it;
``_ws.py`` opens connections and says which failures are retried; ``progress.py`` draws.
They run on Trio and ``websockets.trio``, like the gateway, so the tests drive the same code
in process and as the command.
"""

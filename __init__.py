"""quiesce: a WebSocket <-> Apache Pulsar gateway for TrustGraph data that never loses a message.

Installed, the whole repository is this one package: ``quiesce.supervisor`` (the process and
its command line), ``quiesce.machines`` (declared lifecycles and ledgers: pure, no I/O),
``quiesce.actors`` (Trio actors: the I/O) and ``quiesce.core`` (wire format, protocol,
routes, settings, errors). The repository keeps them at its top level; ``pyproject.toml``
maps that top level onto the package name, so nothing generic lands in site-packages.
"""

__version__ = "0.1.0"

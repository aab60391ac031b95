"""The shared per-user daemon: one process hosts the models for all of a user's clients.

``paths`` (where the socket, lock and log live, created owner-only), ``protocol`` (the
framed wire format), ``server`` (the daemon process), ``spawn`` (start it once under a
race) and the client side (``client``, ``shared``). Importing this package, ``paths``,
``protocol``, ``client`` or ``shared`` loads nothing heavy (no numpy, no ONNX Runtime):
a thin client must stay thin. PROTOCOL.md beside this file is the wire contract.
"""

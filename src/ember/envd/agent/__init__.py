"""envd: the in-sandbox agent, wire-compatible with E2B's envd (HTTP API + Connect RPC).

This package runs inside the guest with nothing but Python's standard library: it imports
only the standard library and its own modules (relatively), so ``ember.envd.bundle`` can
pack it into one executable zip that the guest runs as ``/usr/bin/envd``.

Module map, bottom up: ``version`` (the envd version claimed), ``wire`` (protobuf varints
and fields) -> ``schema`` (the messages) -> ``codec`` (dict <-> protobuf / JSON) ->
``connect`` (Connect protocol) and ``httpio`` (HTTP bodies) -> ``state``, ``terminal``
(ptys), ``processes``, ``filesystem``, ``watch``, ``signing`` (signed file URLs),
``metrics`` (the mechanisms) -> ``process_service``, ``filesystem_service``, ``http_api``
(the endpoints) -> ``server``.
"""

from .server import main

__all__ = ["main"]

"""The envd version this agent claims: what E2B's SDKs read as ``envdVersion`` to turn features on.

The SDK never asks envd itself; it trusts the control plane's ``envdVersion`` (which must
parse as a PEP 440 version, >= 0.1.0). It gates features on that number, so the agent
claims the highest gate whose feature it really implements. Every gate of ``e2b`` 2.63
(``e2b/envd/versions.py`` and ``get_metrics``) up to 0.6.4 is implemented here:

    0.1.4  recursive ``watch_dir``                      watch.DirWatcher(recursive=True)
    0.1.5  ``get_metrics`` (read from ``GET /metrics``)  metrics.py
    0.2.4  disk figures in the metrics                   metrics.py (statvfs of /)
    0.3.0  ``commands.run(stdin=False)``                 StartRequest.stdin
    0.4.0  no forced user: envd picks /init's default    state.AgentState.resolve_user
    0.5.2  ``commands.close_stdin``                       Process/CloseStdin
    0.5.7  octet-stream (and gzip) uploads               http_api.HttpApi.upload
    0.6.2  file metadata (``X-Metadata-*`` -> xattrs)     filesystem.write_metadata
    0.6.3  ``watch_dir(include_entry=True)``              FilesystemEvent.entry
    0.6.4  ``watch_dir(allow_network_mounts=True)``       filesystem.network_mount_type

``/init`` answers with this value in ``X-Envd-Version`` (as E2B's envd does) and
``envd --version`` prints it.
"""

ENVD_VERSION = "0.6.4"

"""ember's control plane: E2B's REST API, its edge proxy and auto-resume, over ember's nodes.

Users run E2B's SDKs unchanged against it (``E2B_API_URL``, ``E2B_SANDBOX_URL``). The parts:

=================  ==========================================================================
``app``            the REST routes, the API-key check, the JSON error boundary
``sandboxes``      create, connect/resume, kill, timeout, refresh, get, metrics, network
``snapshots``      pause, named snapshots, forks
``listing``        list v1/v2: filters, order, the ``X-Next-Token`` cursor
``templates``      template listing, lookups, tags and deletes; registering a build under a name
``builds``         template builds (``POST /v3/templates`` ... status, logs) on the nodes'
                   TemplateService, and the watcher that follows them to ready or error
``gc``             garbage collection of the builds deletes released (``-storage``), roots
                   from the store
``plane``          shared state and primitives: start (placement + records), kill, extend
``catalog``        running sandboxes in memory: the state machine and the team's slots
``placement``      origin node first, else best of K (K=3, R=4, alpha=0.5), retries, errors
``nodes``          gRPC clients of the nodes (SandboxService, InfoService, TemplateService)
``lifecycle``      the evictor (timeouts) and the node sync (orphans, ended sandboxes)
``resume``         the auto-resume policy and ``proxy.SandboxService/ResumeSandbox``
``edge``           the edge proxy
``store``          the database: SQLite or PostgreSQL, one schema, numbered migrations
``server``         ``ApiServer``: all of it in one process
=================  ==========================================================================

Running it (one API process per set of nodes)::

    ember api-key create -db sqlite:///var/lib/ember/api.sqlite3       # prints e2b_... once
    ember api -db sqlite:///var/lib/ember/api.sqlite3 -orchestrator 10.0.0.5:5008 \
        -template base=<build-uuid>,vcpu=2,memory=512 -domain sandboxes.example.com
    E2B_API_URL=http://<api>:3000 E2B_SANDBOX_URL=http://<api>:3002 E2B_API_KEY=e2b_... python app.py

Without ``E2B_SANDBOX_URL`` the SDK reaches envd at ``https://49983-{id}.{domain}``: that
needs wildcard DNS to the edge port and a TLS terminator in front of it.
"""

from ember.api.errors import ApiError
from ember.api.server import ApiConfig, ApiServer
from ember.api.store import DEFAULT_DB_URL, Store, StoreError, open_store
from ember.api.templates import TemplateRegistration

__all__ = [
    "DEFAULT_DB_URL",
    "ApiConfig",
    "ApiError",
    "ApiServer",
    "Store",
    "StoreError",
    "TemplateRegistration",
    "open_store",
]

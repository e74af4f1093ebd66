"""ember's gRPC contract with E2B's control plane: the .proto files and the code protoc makes of them.

The node daemon serves, on one port, the services the original orchestrator serves:

- ``orchestrator.proto``: ``SandboxService`` (Create, Update, List, Delete, Pause, Checkpoint),
- ``info.proto``: ``InfoService`` (ServiceInfo, ServiceStatusOverride), polled for status and metrics,
- ``template-manager.proto``: ``TemplateService`` (TemplateCreate, TemplateBuildStatus, ...).

``proxy.proto`` is the other direction: ``proxy.SandboxService/ResumeSandbox``, which the edge
proxy calls on the API to auto-resume a paused sandbox.

The .proto files are ember's own, written from the facts of the wire: service and method
names, field numbers and types are what E2B's API sends and expects, so an unmodified API can
drive an ember node. The node protos declare **no package** because the original's do not: a
package would become part of every method path (``/pkg.SandboxService/Create``), and the API
calls ``/SandboxService/Create``. ``proxy.proto`` declares ``package proxy`` for the same reason.

Import the generated modules by name (``from ember.rpc import orchestrator_pb2,
orchestrator_pb2_grpc``); this package imports none of them itself, so importing one module
does not register the others in protobuf's descriptor pool. ``scripts/gen_protos.py``
regenerates them (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``, ``*_pb2_grpc.pyi``) and its
docstring explains the include layout that makes their imports resolve inside ``ember.rpc``;
``tests/unit/rpc/test_generated.py`` fails when they are stale.
"""

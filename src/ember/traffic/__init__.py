"""Sandbox traffic as E2B routes it: which sandbox and port a request is for, and relaying to it.

Shared by the node's sandbox proxy (``ember.orchestrator.proxy``) and the control plane's edge
proxy (``ember.api.edge``), so both read requests and answer errors exactly alike.
"""

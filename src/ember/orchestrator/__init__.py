"""The node orchestrator: what one machine runs to host sandboxes for E2B's control plane.

``proxy`` is the per-node sandbox HTTP proxy (port 5007); ``routing`` is its pure request
parsing (which sandbox and port a request is for).
"""

"""The Firecracker driver."""

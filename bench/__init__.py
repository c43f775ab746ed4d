"""Benchmarks: this service vs Socket.IO (Node) vs python-socketio; see bench/__main__.py."""

"""The wire, apart from I/O: how events and control messages look on each transport.

Pure functions and tables (python-websockets' sans-I/O idea): `encode` gives each event its wire
forms once per process, `sse` the stream's own frames, `ws` the WebSocket's ops, frames and close
codes. The transports (app.transports) do the reading and writing; nothing here touches a socket.
"""

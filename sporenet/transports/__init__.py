"""All I/O: link carriers, the ZeroMQ agent bus, HTTP API server, TUN.

Rule: each socket or fd has exactly one owning thread; other threads hand it work
through a thread-safe queue and a wake-up, never by touching the socket.
"""

"""ASGI 3 on the HTTP core: the request scope, receive()/send() over a cycle, lifespan.

`scope` builds the part of a connection scope that HTTP and WebSocket share (pure; ws/ uses it
too); `handler` runs requests and lifespan.

May import: the stdlib, asgiref's types, `dualgate.http` (the cycle), `dualgate.ws` (the
hand-off of a WebSocket upgrade), `dualgate.config`, `dualgate.logs`.
"""

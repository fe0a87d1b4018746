"""ASGI 3 on the HTTP core: the request scope, receive()/send() over a cycle, lifespan.

May import: the stdlib, asgiref's types, `dualgate.http` (the cycle), `dualgate.ws` (the
hand-off of a WebSocket upgrade), `dualgate.config`, `dualgate.logs`.
"""

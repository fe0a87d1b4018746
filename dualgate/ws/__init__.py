"""WebSockets (RFC 6455, RFC 7692) for ASGI applications, over wsproto.

Owns: the opening handshake (`handshake`), permessage-deflate limits (`deflate`) and the
protocol that takes a connection over after the upgrade (`protocol`).

May import: the stdlib, wsproto, `dualgate.http` (the connection's parts), `dualgate.config`,
`dualgate.logs`, `dualgate.metrics`. Never `dualgate.asgi` (the ASGI handler imports this).
"""

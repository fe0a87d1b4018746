"""WebSockets (RFC 6455, RFC 7692) for ASGI applications, over wsproto.

Owns: the opening handshake's checks (`handshake`) and its answer (`answer`),
permessage-deflate limits (`deflate`), the protocol that takes a connection over after the
upgrade (`protocol`: the wire), its phases (`phases`), and the application's side of it
(`session`: the scope, receive() and send()).

May import: the stdlib, wsproto, `dualgate.http` (the connection's parts), `dualgate.config`,
`dualgate.logs`, `dualgate.metrics`. Never `dualgate.asgi` (the ASGI handler imports this).
"""

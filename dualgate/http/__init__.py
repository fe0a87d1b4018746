"""HTTP/1.1 on the event loop: bytes in, request cycles out, response bytes back.

Owns: the sans-IO request reader, its checks and its two head parsers, h11 and llhttp
(`reader`, `checks`, `grammar`, `heads`, `heads_llhttp`), the response head and body framing
(`framing`), the connection's phases and flow control (`phases`, `flow`), the asyncio protocol
(`connection`), one request and its response (`cycle`), what a connection knows of its peer
(`peer`), what all connections of a server share (`state`), the root-path rule (`paths`), and
the read buffer every protocol on a loop reads into (`buffer`).

May import: the stdlib, h11, httptools (`heads_llhttp` only), `dualgate.config`,
`dualgate.logs`, `dualgate.errors`, `dualgate.edge.forwarded` (pure rules) and
`dualgate.metrics` (plain figures). Never the interfaces (`wsgi`, `asgi`, `ws`), the process
layer or the server. `reader`, `checks`, `heads`, `heads_llhttp`, `framing` and `grammar` do
no I/O.
"""

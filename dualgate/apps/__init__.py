"""The applications a server serves: loading them, mounting several under path prefixes, and
wiring their handlers (the WSGI thread pool, ASGI lifespan, metrics tagging, the health check).

Owns: `loading` (MODULE:ATTR, factories, the interface decided once), `mounts` (the longest
matching prefix wins), `wiring` (the handler of one server, built from its Config).

May import: the stdlib, asgiref, `dualgate.config`, `dualgate.errors`, `dualgate.logs`,
`dualgate.hooks`, and the interfaces and core it wires (`wsgi`, `asgi`, `ws`, `http`,
`metrics`). Never the server, the launcher or the process layer.
"""

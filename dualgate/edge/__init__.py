"""What stands between the client and the server: proxies and TLS.

Owns: the trusted forwarding headers (`forwarded`, RFC 7239 and X-Forwarded-*), the PROXY
protocol reader (`proxy_protocol`), the preamble protocol that reads a PROXY header and the
TLS handshake before HTTP takes over (`preamble`, `tls_bio`), and the TLS context (`tls`).

May import: the stdlib, `dualgate.config`, `dualgate.errors`, `dualgate.logs`; `preamble`
also the HTTP connection it hands over to. `forwarded` and `proxy_protocol` are pure.
"""

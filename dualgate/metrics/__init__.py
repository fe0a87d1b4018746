"""What a server counts about itself, and the pages that show it.

Owns: the counters a server keeps on its loop (`counters`), the plain snapshot that crosses
process boundaries (`snapshot`), the Prometheus text format (`prometheus`), the server's own
answers, metrics page and health check (`answers`), the counting wiring installed only while
metrics are on (`metered`), and the supervisor's scrape listener (`scrape`).

May import: the stdlib; `answers`, `metered` and `scrape` also the HTTP core. `snapshot` and
`counters` are plain data that everything else may import.
"""

"""An HTTP API for dubbing jobs with a persistent queue: `python -m latentsync.server --help`.

`api` holds the routes, `store` the SQLite job table, `folders` the jobs folder's layout,
`worker` the threads that run jobs, `cli` the command line. See README.md ("Serve it over HTTP").
"""

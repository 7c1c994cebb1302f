"""The engine and the server: everything that talks to Docker or PostgreSQL.

* ``container``: the Docker SDK in one place (exec with streams, archives), the tests' lost-output seam
* ``framing``: answers framed by a per-call nonce, checked; a lost read asked again (pure)
* ``discovery``: which container (DB_CONTAINER, or Compose labels)
* ``postgres``: psql, pg_* tools and the facts of the server, inside the container
* ``session``: one psql session driven step by step, COPY streams read line by line
* ``versions``: what differs between PostgreSQL versions (pure)
* ``archive``: the custom-format header and the SQL dump's ending (pure)
* ``manual``: the hand commands that do what each task does
"""

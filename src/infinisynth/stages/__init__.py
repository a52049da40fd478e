"""Pipeline stages, one module each along the data flow: seed -> construct -> score -> respond ->
verify -> publish. A stage is a plain object with ``name``, ``schema``, ``cache_key(row)`` and
``async process(row) -> Passed | Rejected``; :mod:`infinisynth.runner` runs it over a shard."""

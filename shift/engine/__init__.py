"""The engine: what runs a query against a home. ``execute.run`` is a query's whole story (parse →
plan → execute); ``indexing`` makes sure the embedding indexes exist, embedding only what is
missing (with ``prepared`` inputs and the ``feeder``'s read-ahead); ``engine`` holds the
``Engine`` (proxy scores, cached in the registry); ``multitask``, ``similarity``, ``tables`` and
``halving`` are the rankers and tables beyond one proxy's scores; ``cost`` gives EXPLAIN its
estimates. Preprocessing, embedders and the executors (in-process, Ray) live in
:mod:`shift.inference`."""

"""The query language: grammar → AST (parser, builder) → plan (planner, against a small
``Catalog`` protocol), with the columns, the SQL compiler and the formatter. Plans are executed
outside this package, by :func:`shift.engine.execute.run`."""

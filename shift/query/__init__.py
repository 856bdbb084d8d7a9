"""The query language: grammar → AST (parser, builder) → plan (planner) → result (executor)."""

"""Benchmarks: each writes JSON under benchmarks/results/ and compares variants in one run."""

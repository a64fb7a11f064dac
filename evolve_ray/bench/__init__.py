"""`evolve-ray bench`: throughput and overhead of the product's own code paths, each measured as
a ratio to a peer (a bare engine, a memory copy, TRL, a fresh trainer start) in the same run.

One module per benchmark (`run(ctx) -> BenchResult`), `runner` to drive them on one Ray cluster,
`report` (pure) to check goals and write bench.json and bench.md.
"""

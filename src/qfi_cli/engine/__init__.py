"""The engine: train, inject-eval and sweep aggregation on plain dicts (never imports hydra or typer)."""

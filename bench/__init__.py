"""Benchmarks and tuning of geosteer; each script runs as `python -m bench.<script>` from the repo root."""

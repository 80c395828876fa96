"""Commands over the library that are not GeoShapes-specific: `geosteer index`, `geosteer search`, `geosteer serve`.

Application layer, like `geosteer.geoshapes` and `geosteer.cli`: these modules
use only the library's public names, and nothing in the library imports them.
Each command is a pair `add_*_arguments(parser)` / `run_*(args) -> int` that
`geosteer.cli.COMMANDS` registers; `geosteer.commands.args` holds what they
share (argument checks, the one-line error, model loading, the methods).
"""

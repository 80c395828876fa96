"""The shipped demo model: open_clip config, trained image tower, recorded metrics.

Data only; load it with `geosteer.encoders.load_clip("demo")`. Rebuild it with
`geosteer train-demo --out geosteer/demo_model`.
"""

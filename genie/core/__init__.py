"""The core: what the three stages and `data_pipelines` build on (architecture §3).

errors, the atomic-write helper, the config base, metrics, device helpers, frame conversions (`frames`: pixel
ranges, the previous-frame shift), the one stage registry, and the training base class with its callbacks;
`genie.nn` holds the network primitives. Nothing here imports a stage, `data_pipelines` or the application
(`genie/*.py`); `tests/test_layers.py` checks it.
"""

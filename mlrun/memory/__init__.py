"""Training memory: measured (measure.py) and predicted before running (estimate.py).

Used by the engine (`data.batch_size: auto`) and by `mlrun profile` alike, so both count bytes the same way.
"""

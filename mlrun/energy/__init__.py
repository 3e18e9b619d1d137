"""Energy and carbon of training and profiling (issue: energy per run).

Three sources, each a counter with `start()`, `poll()` and `joules()`:
  nvml.py      GPU energy from the driver's total energy counter (measured)
  rapl.py      CPU package energy from Linux RAPL powercap counters (measured, wrap-around handled)
  estimate.py  CPU energy as rated power x measured CPU utilisation (an estimate, labelled so)
meter.py combines them for the run and turns joules into kWh, grams of CO2 and energy per sample.

Try: `mlrun train configs/quickstart.yaml` then read "energy" in runs/quickstart/summary.json.
"""

"""rnnkit bench: time rnnkit against torch.nn, a cell loop and the reference, after checking each.

case.py     what runs (Case, Settings, Result) and the implementations' names
suites.py   named sets of cases
machine.py  the machine: description, dtypes, memory
flops.py    the matrix products of a layer and their FLOPs
impls.py    the implementations
verify.py   inputs and the check against the float64 reference
timing.py   interleaved timing and peak memory
run.py      one case, every implementation: check, time, relate
report.py   tables, JSON, CSV, plots, results pages

The modules are imported one by one (this file imports nothing), so that the command line can
read the names in case.py and suites.py without loading torch.
"""

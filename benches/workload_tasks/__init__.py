"""Task functions of the workloads benchmark (benches/workloads.py), one module per
workload, each importing at its top what such a module of a user's would: workers
that start as fresh interpreters (loky, this package, a stdlib pool using "spawn")
pay for those imports, workers forked from the parent inherit them."""

"""Capability probes: small programs that answer one question about a framework (does its autodiff
differentiate a new activation? a Hessian-vector product? does it keep to its threads?), each run in
a worker process like a cell, and stored with the framework's version (orchestrate/capabilities.py)."""

"""Framework modules of the old interpreters, run by ``dlarena_runner.job_worker`` (Python 3.6 syntax)."""

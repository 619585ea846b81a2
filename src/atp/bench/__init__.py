"""Performance benchmark: stage overhead, evaluation overhead, data-pipeline throughput, peak memory
(``python -m atp.bench``; :mod:`atp.bench.cli` describes the method). One module per concern: ``timing``,
``stages`` (the stage and evaluation benchmarks), ``data`` (the data pipeline), ``records`` (targets and
tables), ``step_checks`` (what a training step must not do), ``cli``."""

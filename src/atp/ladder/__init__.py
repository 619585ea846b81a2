"""``python -m atp.ladder``: source → AdaBN → Align → Teach → Propagate on every toy shift family × seeds.

The toy families share their source data, so one ``stage=source`` job per seed trains the source model
for all of them; each (family, seed) is then one resumable ``atp.train stage=chain`` job of the other
stages, started from it, plus a target oracle for the first seed (the same network trained on the
target's train labels: a diagnostic ceiling, never used for training or model selection). Up to
``--jobs`` jobs run at once. Every finished stage is evaluated on the family's target val (cached), and
one table per family goes to ``<out>/ladder.md`` and ``ladder.json``. Modules: ``plan`` (what runs
where, and whether the source can be shared), ``jobs`` (subprocesses, the scheduler and the progress
display), ``tables`` (mean ± std, gap closed, per-class change), ``cli`` (arguments and the whole run).
"""

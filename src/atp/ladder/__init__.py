"""``python -m atp.ladder``: source → AdaBN → Align → Teach → Propagate on every toy shift family × seeds.

Each (family, seed) is one resumable ``atp.train stage=chain`` job, plus a target oracle (the same
network trained on the target's train labels: a diagnostic ceiling, never used for training or model
selection). Every finished stage is evaluated on the family's target val (cached), and one table per
family goes to ``<out>/ladder.md`` and ``ladder.json``. Modules: ``plan`` (what runs where), ``jobs``
(subprocesses and the progress display), ``tables`` (mean ± std, gap closed, per-class change),
``cli`` (arguments and the whole run).
"""

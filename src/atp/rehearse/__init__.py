"""``python -m atp.rehearse``: the paper recipe rehearsed at full size, on toy scenes written as the real datasets
ship them (:mod:`atp.data.toy.official`). Modules: ``plan`` (the data tree and every command with its overrides),
``probe`` (the recording callback each training stage runs with), ``runner`` (subprocesses with their peak RSS, or
in-process calls for the test), ``checks`` (what the toy sizes cannot show), ``report`` (``rehearsal.json`` and
``rehearsal.md``), ``cli`` (arguments and the whole run)."""

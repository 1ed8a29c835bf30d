"""Golden-hash suites for QA: fail the build the moment one output byte of a model moves, and say which case and how.

* :mod:`~kolm_audit.golden.suite` — the suite document (``kolm.golden-suite/1``): strict reader, canonical writer;
* :mod:`~kolm_audit.golden.runner` — run every case batched and compare by digest; readable
  :mod:`~kolm_audit.golden.differences` (label changed, first divergent token with context, embedding distance);
* :mod:`~kolm_audit.golden.junit` — deterministic JUnit XML (no timestamp, no hostname);
* :mod:`~kolm_audit.golden.bless` — record new expectations, change existing ones only case by case;
* :mod:`~kolm_audit.golden.from_log` — a suite sampled from logged production decisions;
* :mod:`~kolm_audit.golden.pytest_plugin` — ``pytest --kolm-golden SUITE --kolm-artifact model.kolm``.

The command line is ``kolm-audit golden run|bless|new`` (:mod:`kolm_audit.cli.golden`); the guide is
docs/golden.md. Import from the defining modules (this package's ``__init__`` stays empty so that the pytest plugin,
loaded in every pytest run of an environment that has kolm-audit, costs nothing).

    >>> from kolm_audit.golden.suite import SUITE_SCHEMA
    >>> SUITE_SCHEMA
    'kolm.golden-suite/1'
"""

"""``python -m kolm_audit ARGS`` is ``kolm-audit ARGS``."""

from kolm_audit.cli import main

main()

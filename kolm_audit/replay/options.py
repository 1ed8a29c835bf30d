"""How to replay (:class:`ReplayOptions`): nothing here may change a replay's ``results``, only how fast they come.

    >>> ReplayOptions(batch_size=8, workers=2).backend
    'auto'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kolm_audit.errors import InputError
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.replay.selection import Selection
from kolm_audit.runtime.ops import BACKENDS


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay. Nothing here may change ``results`` — only how fast they come."""

    backend: str = "auto"
    batch_size: int = 32
    workers: int = 1
    selection: Selection = field(default_factory=Selection)
    supplied_checkpoint: str | None = None     # a checkpoint note the auditor kept
    keystore: KeyStore | None = None           # tenant key store, to open sealed ids / text
    kek: KeyEncryptionKey | None = None
    replay_mismatched: bool = False            # also re-run receipts that name another artifact
    ray: str | None = None                     # run the workers as Ray actors: local | auto | a cluster address
    require_checkpointed: bool = False         # receipts no signed checkpoint covers are an error, not a warning

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError("unknown backend", field="--backend", expected=" | ".join(BACKENDS), actual=self.backend)
        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer", field=f"--{name.replace('_', '-')}",
                                 actual=repr(value))
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise InputError("a Ray address is needed", field="--ray", expected="local | auto | ADDRESS",
                             actual=repr(self.ray))
        if self.keystore is not None and self.kek is None:
            raise InputError("a key store needs its key-encryption key", field="--kek-file/--kek-env")

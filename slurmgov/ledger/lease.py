"""A run's hold is a lease: the run renews it while it lives, and a run that dies without closing
it (SIGKILL, a host that went down) lets it lapse. The next command that opens the ledger then
releases it (``Ledger.release_lapsed``), charging only what the run recorded.

The lease is ``$SLURMGOV_LEASE_S`` seconds (default 90), renewed every third of that: a run
whose renewals fail twice in a row (a database outage) still holds its money.
"""

from __future__ import annotations

import logging
import os
import threading

from slurmgov.errors import InputError, SlurmgovError

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 90.0


def lease_seconds() -> float:
    raw = os.environ.get("SLURMGOV_LEASE_S")
    if raw is None or raw == "":
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < 10 ** 7):
        raise InputError(f"$SLURMGOV_LEASE_S: {raw!r} is not a number of seconds between 1 and 10000000")
    return value


class LeaseKeeper:
    """Renews ``hold_key`` every ``lease_s / 3`` seconds on a daemon thread until ``stop``.
    ``on_lost()`` is called once if the hold was released meanwhile (an admin, or a lease that
    lapsed while this host was frozen): the run's money is no longer reserved."""

    def __init__(self, ledger, hold_key: str, lease_s: float, on_lost=None):
        self._ledger, self._key, self._lease_s = ledger, hold_key, lease_s
        self._on_lost = on_lost or (lambda: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease {hold_key}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                alive = self._ledger.renew(self._key, self._lease_s)
            except SlurmgovError as e:  # the database is away: try again next time
                log.warning("cannot renew the lease of hold %s: %s", self._key, e)
                continue
            if not alive:
                log.warning("hold %s was released while its run was still going", self._key)
                self._on_lost()
                return

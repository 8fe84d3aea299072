"""The parts of the pgupgrade library (include/pgupgrade) that the generator reads, named here and nowhere else:
when a module moves, this file follows it and the rest of the package keeps these names.

Imported inside the functions that need it, never at the top of a module of this package: importing the package
(as the tests do for its list of pages) must not load the library, and a library that fails to import only costs
the pages that need it."""

from pgupgrade import profiles, versions
from pgupgrade.cluster import Service
from pgupgrade.extension import catalog as extension_catalog  # SCAN_REPEAT, LOCK_TIMEOUT, compat_scan
from pgupgrade.major import cutover as major_cutover  # cutover_steps and the steps
from pgupgrade.major import plan as major_plan  # estimate_outage (the plan's formula), DEFAULT_GB_PER_S
from pgupgrade.major.model import Method, TransferMode
from pgupgrade.minor import cutover as minor_cutover  # cutover_steps and the steps
from pgupgrade.minor import plan as minor_plan  # OUTAGE_ESTIMATE_S
from pgupgrade.scratch import create_cluster
from pgupgrade.sql import connect, fetch, fetch_named, load, scalar

TRANSFER_MODES = tuple(m.value for m in TransferMode)  # pg_upgrade's modes, in the order the pages list them

__all__ = [
    "TRANSFER_MODES",
    "Method",
    "Service",
    "connect",
    "create_cluster",
    "extension_catalog",
    "fetch",
    "fetch_named",
    "load",
    "major_cutover",
    "major_plan",
    "minor_cutover",
    "minor_plan",
    "profiles",
    "scalar",
    "versions",
]

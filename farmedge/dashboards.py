"""Deprecated: the dashboards' generator is :mod:`farmedge.provision.dashboards`
(``farmedge provision dashboards``). ``python -m farmedge.dashboards`` and
this module's names keep working for scripts written before."""

from __future__ import annotations

import sys

from farmedge.provision.dashboards import (
    DATASOURCE_UID,
    Expect,
    dashboards,
    expectations,
    idle_gateways_query,
    main,
    reading_fields,
)

__all__ = ["DATASOURCE_UID", "Expect", "dashboards", "expectations", "idle_gateways_query",
           "main", "reading_fields"]

if __name__ == "__main__":
    sys.exit(main())

"""Compatibility names: the records the edge hands on live in
:mod:`farmedge.records`."""

from __future__ import annotations

from farmedge.records import AcceptedReading, StatusEvent
from farmedge.records import Stage as Observer

__all__ = ["AcceptedReading", "Observer", "StatusEvent"]

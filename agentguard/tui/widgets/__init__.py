"""Widgets of the watch app."""

from agentguard.tui.widgets.banner import Banner
from agentguard.tui.widgets.clipped import Clipped
from agentguard.tui.widgets.keyed_table import Cell, Column, KeyedTable, SyncResult

__all__ = ["Banner", "Cell", "Clipped", "Column", "KeyedTable", "SyncResult"]

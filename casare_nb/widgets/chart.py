"""The history chart, with bqplot (the only module importing it): runs per day as stacked
bars (completed green, failed red) and the success rate as a line on a right-hand percent
axis. Fed a :class:`~casare_nb.widgets.state.DailySeries` (from
``client.history.daily(...)``, summed per day by
:func:`~casare_nb.widgets.viewmodels.daily_series`).
"""

from __future__ import annotations

import math
from typing import Any, Final

import bqplot
import ipywidgets as widgets

from casare_nb.widgets.viewmodels import DailySeries

__all__ = ["HistoryChart"]

OK_COLOUR: Final = "#2e7d32"
FAILED_COLOUR: Final = "#c62828"
RATE_COLOUR: Final = "#1565c0"


class HistoryChart:
    """A bqplot figure (``.widget``, CSS class ``casare-history-chart``): bars of completed
    and failed runs per day, a line of the success rate in percent."""

    def __init__(self, *, title: str = "Runs per day") -> None:
        self.x = bqplot.OrdinalScale()
        self.y_runs = bqplot.LinearScale(min=0)
        self.y_rate = bqplot.LinearScale(min=0, max=100)
        self.bars = bqplot.Bars(
            x=[],
            y=[[], []],
            scales={"x": self.x, "y": self.y_runs},
            type="stacked",
            colors=[OK_COLOUR, FAILED_COLOUR],
            labels=["completed", "failed"],
            display_legend=True,
            tooltip=bqplot.Tooltip(fields=["x", "y"], labels=["day", "runs"]),
        )
        self.line = bqplot.Lines(
            x=[],
            y=[],
            scales={"x": self.x, "y": self.y_rate},
            colors=[RATE_COLOUR],
            labels=["success %"],
            display_legend=True,
            marker="circle",
        )
        axes = [
            bqplot.Axis(scale=self.x, side="bottom", label="day (UTC)"),
            bqplot.Axis(scale=self.y_runs, side="left", label="runs", tick_format="d"),
            bqplot.Axis(scale=self.y_rate, side="right", label="success %"),
        ]
        self.figure: Any = bqplot.Figure(
            marks=[self.bars, self.line],
            axes=axes,
            title=title,
            legend_location="top-left",
            fig_margin={"top": 40, "bottom": 40, "left": 50, "right": 50},
            layout=widgets.Layout(width="100%", height="260px"),
        )
        self.figure.add_class("casare-history-chart")
        self.series: DailySeries | None = None

    @property
    def widget(self) -> Any:
        return self.figure

    def update(self, series: DailySeries) -> None:
        """Show ``series`` (a day without a decided run has no success-rate point)."""
        if series == self.series:
            return
        self.series = series
        labels = list(series.labels)
        rates = [math.nan if r is None else r for r in series.success_rate]
        with self.figure.hold_sync():
            self.bars.x = labels
            self.bars.y = [list(series.completed), list(series.failed)]
            self.line.x = labels
            self.line.y = rates

"""The dashboard notebook (``POST /casare/dashboard``, ``casare-nb lab``)."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DASHBOARD_NOTEBOOK", "dashboard_notebook"]

DASHBOARD_NOTEBOOK: Final = "casare-dashboard.ipynb"
"""Its name, at the Jupyter server's root."""


def dashboard_notebook() -> dict[str, Any]:
    """The dashboard notebook: one cell showing :class:`casare_nb.widgets.Dashboard`."""
    return {
        "cells": [
            {
                "cell_type": "markdown",
                "id": "casare-dashboard-title",
                "metadata": {},
                "source": "# casare dashboard\n\nRobots, queue, running jobs, history, "
                "upcoming fires and a submit form, live from the orchestrator.",
            },
            {
                "cell_type": "code",
                "id": "casare-dashboard",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": "from casare_nb.widgets import Dashboard\n\nDashboard()",
            },
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }

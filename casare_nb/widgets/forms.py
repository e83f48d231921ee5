"""A parameter form as ipywidgets, from the plan of :mod:`.fields`: one input per declared
parameter (Checkbox for a bool, Dropdown for choices, Password for a secret, Text otherwise,
numbers included: see :class:`~casare_nb.widgets.fields.FieldKind`) with its validation
error shown on the field.

CSS classes (``prefix`` is ``casare-field`` for the submit form): the input
``<prefix>-<name>``, its error line ``<prefix>-error-<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

import ipywidgets as widgets

from casare_nb.core.params import ParamSchema
from casare_nb.widgets.fields import FieldKind, FieldPlan, changed_texts, css_name, form_plan

__all__ = ["ParamField", "ParamForm"]

_ERROR_STYLE = "color:#c62828;font-size:12px"


class ParamField:
    """One parameter: a label, its typed input, its error line."""

    def __init__(self, plan: FieldPlan, prefix: str) -> None:
        self.plan = plan
        self.input: Any = self._input(plan)
        self.input.add_class(f"{prefix}-{css_name(plan.name)}")
        self.error: Any = widgets.HTML("")
        self.error.add_class(f"{prefix}-error-{css_name(plan.name)}")
        label = widgets.HTML(
            f'<span title="{escape(plan.placeholder, quote=True)}" '
            f'style="font-family:monospace">{escape(plan.label, quote=False)}</span>',
            layout=widgets.Layout(width="160px"),
        )
        self.widget: Any = widgets.HBox([label, self.input, self.error])

    @staticmethod
    def _input(plan: FieldPlan) -> Any:
        layout = widgets.Layout(width="260px")
        match plan.kind:
            case FieldKind.BOOL:
                return widgets.Checkbox(value=plan.initial == "True", indent=False)
            case FieldKind.CHOICE:
                return widgets.Dropdown(
                    options=list(plan.options), value=plan.initial, layout=layout
                )
            case FieldKind.SECRET:
                return widgets.Password(
                    value=plan.initial, placeholder=plan.placeholder, layout=layout
                )
        return widgets.Text(value=plan.initial, placeholder=plan.placeholder, layout=layout)

    @property
    def text(self) -> str:
        """The value as text, the way ``-p NAME VALUE`` (and ParamSchema.problem) read it."""
        value = self.input.value
        if self.plan.kind is FieldKind.BOOL:
            return "True" if value else "False"
        return str(value)

    @text.setter
    def text(self, text: str) -> None:
        if self.plan.kind is FieldKind.BOOL:
            self.input.value = text == "True"
        else:
            self.input.value = text

    def show(self, problem: str | None) -> None:
        """Show ``problem`` on the field (None clears it)."""
        text = escape(problem or "", quote=False)
        self.error.value = f'<span style="{_ERROR_STYLE}">⚠ {text}</span>' if problem else ""

    @property
    def problem(self) -> str:
        return str(self.error.value)


class ParamForm:
    """A form for ``schema`` (``values``: a job's parameters to start from)."""

    def __init__(
        self,
        schema: ParamSchema,
        values: Mapping[str, Any] | None = None,
        *,
        prefix: str = "casare-field",
    ) -> None:
        self.schema = schema
        self.plans = form_plan(schema, values)
        self.fields = {plan.name: ParamField(plan, prefix) for plan in self.plans}
        children = [f.widget for f in self.fields.values()]
        if not children:
            children = [widgets.HTML('<span style="color:#757575">no parameters</span>')]
        self.widget: Any = widgets.VBox(children)

    def texts(self) -> dict[str, str]:
        return {name: field.text for name, field in self.fields.items()}

    def check(self, names: set[str] | None = None) -> dict[str, str]:
        """Judge every field (or those ``names``) with ParamSchema.problem, show each
        problem on its field (clearing the others); answers name -> problem."""
        problems: dict[str, str] = {}
        for name, field in self.fields.items():
            problem = None
            if names is None or name in names:
                problem = self.schema.problem(name, field.text)
            field.show(problem)
            if problem:
                problems[name] = problem
        return problems

    def changed(self) -> dict[str, str]:
        """The texts that differ from what the fields started with (to send)."""
        return changed_texts(self.plans, self.texts())

    def show(self, name: str, problem: str) -> bool:
        """Show a server's refusal on the field it names; whether there is such a field."""
        field = self.fields.get(name)
        if field is None:
            return False
        field.show(problem)
        return True

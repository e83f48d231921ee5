"""Static name analysis of notebook cells, used to plan what to replay on resume.

After every cell the engine checkpoints the kernel namespace. Values that cannot be
pickled (open files, sockets, locks, browser pages, ...) are *missing* from a checkpoint;
on resume they are rebuilt by replaying the earlier cells that create them.
:func:`replay_plan` picks those cells from what :func:`cell_names` finds in each source.

The analysis is deliberately conservative: it may report more names than a cell really
reads or changes, never fewer (except through dynamic tricks such as ``exec`` or
``globals()[...]``, which no static analysis sees). IPython syntax (line magics, shell
escapes, ``x = !cmd``) is neutralised before parsing; a cell magic (``%%bash``) is opaque.

Pure: stdlib + pydantic, no I/O.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ALWAYS_RUN_TAG",
    "WILDCARD",
    "CellNames",
    "cell_names",
    "replay_plan",
    "source_sha256",
    "touched_names",
]

ALWAYS_RUN_TAG = "casare-always-run"
"""Cells carrying this tag are replayed on every resume (e.g. ``browser = launch()``)."""

WILDCARD = "*"
"""Put in ``defines`` when a cell may bind names it does not spell out
(``from m import *``, ``%run script.py``); :func:`replay_plan` treats it as "maybe any"."""


class CellNames(BaseModel):
    """What one cell binds or changes (``defines``) and reads (``uses``) at notebook level.

    ``defines`` holds names bound at the top level of the cell (assignments, imports,
    ``def``/``class``, loop and ``with`` targets, walrus, ``global`` writes inside
    functions, ``del``) plus names whose object the cell may change in place
    (``df["a"] = 1``, ``obj.x = 2``, a method call used as a statement: ``lst.append(1)``).
    ``uses`` holds every name the cell may read, function bodies included. ``parsed`` is
    False when the source could not be analysed (syntax error, cell magic); then both sets
    are empty and mean "unknown".
    """

    model_config = ConfigDict(frozen=True)

    defines: frozenset[str]
    uses: frozenset[str]
    parsed: bool


_UNPARSED = CellNames(defines=frozenset(), uses=frozenset(), parsed=False)

# --------------------------------------------------------------------------- IPython syntax

_IDENT = r"[A-Za-z_]\w*"
# ``x = !cmd`` / ``a, b = %sx cmd``: the targets are bound, the rest is a command line.
_ASSIGN_ESCAPE = re.compile(
    rf"^(?P<indent>\s*)(?P<targets>{_IDENT}(?:\s*,\s*{_IDENT})*)\s*=\s*(?P<cmd>[!%].*)$"
)
# ``%time stmt`` / ``%timeit stmt``: the statement is ordinary Python run in the namespace.
_TIMED = re.compile(r"^%(?:time|timeit)\s+(?P<code>[^-\s].*)$")
_HELP = re.compile(r"^(?:\?{1,2}[\w.]+|[\w.]+\?{1,2})$")
_OPENS_BLOCK = re.compile(r":\s*(?:#.*)?$")
_DOLLAR_VAR = re.compile(rf"(?<!\$)\$(?P<name>{_IDENT})")
_BRACED = re.compile(r"(?<!\{)\{(?P<expr>[^{}]+)\}(?!\})")


def _interpolated_names(command: str) -> list[str]:
    """Names IPython may expand into a shell / magic line via ``$name`` or ``{expr}``."""
    found: list[str] = [m.group("name") for m in _DOLLAR_VAR.finditer(command)]
    for match in _BRACED.finditer(command):
        try:
            expr = ast.parse(match.group("expr").strip(), mode="eval")
        except (SyntaxError, ValueError):
            continue
        found.extend(n.id for n in ast.walk(expr) if isinstance(n, ast.Name))
    return list(dict.fromkeys(found))


def _names_expr(names: Sequence[str]) -> str:
    """A Python expression that loads ``names`` (``None`` when there are none)."""
    return f"({', '.join(names)},)" if names else "None"


def _neutralise(source: str) -> str | None:
    """Rewrite IPython-only lines into plain Python with the same name effects.

    Returns None for a cell magic (``%%...``), whose body is not Python we can analyse.
    """
    lines = source.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return ""
    if lines[0].lstrip().startswith("%%"):
        return None
    # IPython drops the indentation of the first line from the whole cell.
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    if indent and all(line.startswith(indent) or not line.strip() for line in lines):
        lines = [line[len(indent) :] for line in lines]

    out: list[str] = []
    prev_lead, opens_block = "", False  # of the last Python line kept as it was
    for line in lines:
        stripped = line.lstrip()
        assign = _ASSIGN_ESCAPE.match(line)
        if assign is not None:
            names = _interpolated_names(assign.group("cmd"))
            body = f"{assign.group('targets')} = {_names_expr(names)}"
        elif stripped.startswith(("%", "!")):
            timed = _TIMED.match(stripped)
            if timed is not None:
                body = timed.group("code")
            elif re.match(r"^%run\b", stripped):
                body = "from _casare_run_ import *"  # ``%run script.py`` may bind anything
            else:
                body = _names_expr(_interpolated_names(stripped))
        elif _HELP.match(stripped.rstrip()):
            body = "pass"
        else:
            out.append(line)
            if stripped and not stripped.startswith("#"):
                prev_lead = line[: len(line) - len(stripped)]
                opens_block = _OPENS_BLOCK.search(line) is not None
            continue
        # IPython tolerates stray indentation on escaped lines; Python does not.
        lead = line[: len(line) - len(stripped)]
        if not opens_block and len(lead) > len(prev_lead):
            lead = prev_lead
        out.append(lead + body)
    return "\n".join(out)


def _parse(source: str) -> ast.Module | None:
    """Parse a cell, accepting IPython syntax; None when that is impossible."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        pass
    rewritten = _neutralise(source)
    if rewritten is None:
        return None
    try:
        return ast.parse(rewritten)
    except (SyntaxError, ValueError):
        return None


# --------------------------------------------------------------------------- name collection

_ScopeKind = Literal["module", "function", "lambda", "class", "comprehension"]


class _Scope:
    """Names seen in one Python scope while walking the tree."""

    __slots__ = ("bound", "free_children", "globals", "kind", "loads", "mutated")

    def __init__(self, kind: _ScopeKind) -> None:
        self.kind: _ScopeKind = kind
        self.bound: set[str] = set()
        self.loads: set[str] = set()
        self.free_children: set[str] = set()
        self.globals: set[str] = set()
        self.mutated: set[str] = set()

    @property
    def executes_now(self) -> bool:
        """Whether the scope's code runs when the cell runs (not a deferred body)."""
        return self.kind in ("module", "class", "comprehension")


def _root_name(node: ast.expr) -> str | None:
    """``a`` for ``a.b[c].d``; None when the chain does not start at a plain name."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Starred):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


class _Collector(ast.NodeVisitor):
    """Collects module-level ``defines`` and ``uses`` of one parsed cell."""

    def __init__(self) -> None:
        self.module = _Scope("module")
        self.scopes: list[_Scope] = [self.module]
        self.global_defines: set[str] = set()
        self.global_uses: set[str] = set()

    # -- helpers ------------------------------------------------------------------------
    @property
    def scope(self) -> _Scope:
        return self.scopes[-1]

    def bind(self, name: str, scope: _Scope | None = None) -> None:
        target = scope if scope is not None else self.scope
        if target.kind != "module" and name in target.globals:
            self.global_defines.add(name)
        else:
            target.bound.add(name)

    def load(self, name: str) -> None:
        if self.scope.kind != "module" and name in self.scope.globals:
            self.global_uses.add(name)
        else:
            self.scope.loads.add(name)

    def mutate(self, node: ast.expr) -> None:
        name = _root_name(node)
        if name is not None:
            self.scope.mutated.add(name)

    def push(self, kind: _ScopeKind) -> _Scope:
        scope = _Scope(kind)
        self.scopes.append(scope)
        return scope

    def pop(self) -> None:
        scope = self.scopes.pop()
        parent = self.scope
        if scope.kind == "class":
            # Class bodies read globals before their own bindings (``x = x + 1``) and
            # methods skip the class scope altogether: subtract nothing.
            free = scope.loads | scope.free_children
            mutated = set(scope.mutated)
        else:
            free = (scope.loads | scope.free_children) - scope.bound
            mutated = scope.mutated - scope.bound
        parent.free_children |= free
        if scope.executes_now and parent.executes_now:
            parent.mutated |= mutated

    def visit_all(self, nodes: Sequence[ast.AST | None]) -> None:
        for node in nodes:
            if node is not None:
                self.visit(node)

    def result(self) -> CellNames:
        module = self.module
        defines = module.bound | module.mutated | self.global_defines
        uses = module.loads | module.free_children | self.global_uses
        return CellNames(defines=frozenset(defines), uses=frozenset(uses), parsed=True)

    # -- names ----------------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.load(node.id)
        elif isinstance(node.ctx, ast.Del):
            self.load(node.id)  # ``del x`` needs x to exist
            self.bind(node.id)
        else:
            self.bind(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.mutate(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.mutate(node)
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        # A method call run for its effect (``lst.append(1)``, ``await page.goto(url)``) may
        # change its receiver in place. Calls whose result is used (``conn = db.connect()``)
        # are taken as queries/constructors, so ``db`` is not reported as changed.
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            self.mutate(call.func)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.load(node.target.id)
            self.bind(node.target.id)
        else:
            self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit_all([node.annotation, node.value])
        if isinstance(node.target, ast.Name):
            # A bare ``x: int`` binds nothing at module level but makes x local elsewhere.
            if node.value is not None or self.scope.kind != "module":
                self.bind(node.target.id)
        else:
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # The walrus binds in the nearest enclosing scope that is not a comprehension.
        owner = next(s for s in reversed(self.scopes) if s.kind != "comprehension")
        self.bind(node.target.id, owner)

    def visit_Global(self, node: ast.Global) -> None:
        if self.scope.kind != "module":
            self.scope.globals.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.bind(alias.asname or alias.name.split(".", 1)[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.bind(WILDCARD if alias.name == "*" else alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.visit_all([node.type])
        if node.name:
            self.bind(node.name)
        self.visit_all(node.body)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self.generic_visit(node)
        if node.name:
            self.bind(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self.bind(node.rest)

    # -- scopes ---------------------------------------------------------------------------
    def _arguments_outer(self, args: ast.arguments) -> None:
        """Defaults and annotations are evaluated in the enclosing scope."""
        self.visit_all([*args.defaults, *args.kw_defaults])
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        self.visit_all([a.annotation for a in every if a is not None])

    def _bind_parameters(self, args: ast.arguments) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        for arg in every:
            if arg is not None:
                self.bind(arg.arg)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.visit_all(node.decorator_list)
        self._arguments_outer(node.args)
        self.visit_all([node.returns])
        self.bind(node.name)
        self.push("function")
        self._bind_parameters(node.args)
        self.visit_all(node.body)
        self.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._arguments_outer(node.args)
        self.push("lambda")
        self._bind_parameters(node.args)
        self.visit(node.body)
        self.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.visit_all(node.decorator_list)
        self.visit_all(node.bases)
        self.visit_all(node.keywords)
        self.push("class")
        self.visit_all(node.body)
        self.pop()
        self.bind(node.name)

    def _comprehension(self, generators: list[ast.comprehension], body: list[ast.expr]) -> None:
        # The first iterable is evaluated in the enclosing scope.
        self.visit(generators[0].iter)
        self.push("comprehension")
        for index, gen in enumerate(generators):
            if index:
                self.visit(gen.iter)
            self.visit(gen.target)
            self.visit_all(gen.ifs)
        self.visit_all(body)
        self.pop()

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node.generators, [node.elt])

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._comprehension(node.generators, [node.elt])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._comprehension(node.generators, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node.generators, [node.key, node.value])


# --------------------------------------------------------------------------- public API


@lru_cache(maxsize=2048)
def cell_names(source: str) -> CellNames:
    """Names a cell binds or changes (``defines``) and may read (``uses``).

    IPython line magics and shell escapes are treated as no-ops (apart from names they
    interpolate with ``$x`` / ``{x}``), ``x = !cmd`` defines x, ``%time stmt`` is
    analysed as ``stmt``; a cell magic or a syntax error gives ``parsed=False``.
    """
    tree = _parse(source)
    if tree is None:
        return _UNPARSED
    collector = _Collector()
    collector.visit(tree)
    return collector.result()


def touched_names(source: str) -> frozenset[str]:
    """Every name a cell may read or change: ``defines | uses``."""
    names = cell_names(source)
    return names.defines | names.uses


def source_sha256(source: str) -> str:
    """Hex SHA-256 of a cell source (UTF-8), to notice edited cells between attempts."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def replay_plan(
    sources: Sequence[str],
    tags: Sequence[Collection[str]],
    *,
    upto: int,
    missing: Collection[str],
) -> list[int]:
    """Indices (ascending) of the cells before ``upto`` to replay to rebuild ``missing``.

    ``sources``/``tags`` describe the code cells in order; every variable not in
    ``missing`` is assumed restored from the checkpoint taken before cell ``upto``.
    Walking backwards from ``upto - 1``, a cell is included when it is tagged
    :data:`ALWAYS_RUN_TAG`, when it defines a name still needed, or - while anything is
    still needed - when it could not be analysed or may bind anything (:data:`WILDCARD`).
    An included cell satisfies the names it defines but does not use, and makes the
    ``missing`` names it uses needed (so ``x += 1`` also pulls in the earlier ``x = ...``).
    Dependencies only point backwards, so one backward pass reaches the fixpoint.

    Replayed cells also rebind names that were restored; callers that want the
    checkpointed values back should re-apply them after the replay.
    """
    if len(tags) != len(sources):
        raise ValueError(f"got {len(sources)} sources but {len(tags)} tag collections")
    if not 0 <= upto <= len(sources):
        raise ValueError(f"upto={upto} is outside 0..{len(sources)}")
    lost = frozenset(missing)
    needed: set[str] = set(lost)
    plan: list[int] = []
    for index in range(upto - 1, -1, -1):
        names = cell_names(sources[index])
        always = ALWAYS_RUN_TAG in tags[index]
        if not names.parsed:
            if always or needed:
                plan.append(index)
            continue
        maybe_any = WILDCARD in names.defines and bool(needed)
        if not (always or maybe_any or names.defines & needed):
            continue
        plan.append(index)
        needed -= names.defines - names.uses
        needed |= names.uses & lost
    plan.reverse()
    return plan

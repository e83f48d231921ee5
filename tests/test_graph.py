"""The workflow graph model (casare_nb.core.graph): templates, problems, compiling a graph to
a notebook and reading any notebook back as a graph, with property tests of the round trip."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casare_nb.core.cells import ALWAYS_RUN_TAG
from casare_nb.core.graph import (
    CODE_TEMPLATE,
    GRAPH_KEY,
    NODE_KEY,
    NOTE_TEMPLATE,
    Catalog,
    Edge,
    Graph,
    GraphError,
    GraphInput,
    Node,
    NodeTemplate,
    TemplateError,
    auto_layout,
    compile_graph,
    problems,
    read_graph,
    template_from_data,
    topological_order,
)
from casare_nb.core.params import read_schema

READ = {
    "id": "data.read",
    "name": "Read CSV",
    "category": "data",
    "imports": ["from casare_nb.nodes import data as nb_data"],
    "params": {
        "path": {"type": "string", "required": True},
        "sep": {"type": "choice", "choices": [",", ";"], "default": ","},
        "limit": {"type": "integer", "default": 10, "minimum": 1},
    },
    "outputs": {"frame": {}},
    "code": "{{ out.frame }} = nb_data.read_csv({{ path }}, sep={{ sep }}, limit={{ limit }})",
}
JOIN = {
    "id": "data.join",
    "name": "Join",
    "category": "data",
    "params": {"on": {"type": "list", "default": ["id"]}, "sql": {"type": "text", "default": ""}},
    "inputs": {"left": {}, "right": {"optional": True}},
    "outputs": {"frame": {}, "count": {}},
    "code": "{{ out.frame }} = {{ in.left }}.merge({{ in.right }}, on={{ on }})\n"
    "{{ out.count }} = len({{ out.frame }})  # {{ node }}",
}
COND = {
    "id": "control.condition",
    "name": "Condition",
    "category": "control",
    "params": {"expression": {"type": "expression", "required": True}},
    "inputs": {"value": {"optional": True}},
    "outputs": {"value": {"gate": True}},
    "code": "value = {{ in.value }}\n"
    "{{ out.value }} = (True if value is None else value) if {{ expression }} else None",
}
OPEN = {
    "id": "browser.open",
    "name": "Open",
    "category": "browser",
    "replay": True,
    "params": {"url": {"type": "string", "default": "http://x"}, "flag": {"type": "boolean"}},
    "outputs": {"page": {}},
    "code": "{{ out.page }} = ({{ url }}, {{ flag }})",
}


def catalog() -> Catalog:
    return Catalog.of(template_from_data(d, f"{d['id']}.yaml") for d in (READ, JOIN, COND, OPEN))


CAT = catalog()


def two_nodes() -> Graph:
    return Graph(
        inputs=[GraphInput(name="src", type="string", default="a.csv", help="the file")],
        nodes=[
            Node(id="read_1", template="data.read", params={"limit": 5}, bind={"path": "src"}),
            Node(id="join_1", template="data.join", x=300.0, y=40.0),
        ],
        edges=[Edge(source="read_1", source_port="frame", target="join_1", target_port="left")],
    )


# --------------------------------------------------------------------------- templates


def test_a_template_renders_params_as_literals_and_ports_as_variables() -> None:
    """A node's cell is its template's imports and code: params as Python literals, a bound
    param as the input's name, inputs as the upstream variables, outputs named after it."""
    nb = compile_graph(two_nodes(), CAT)
    sources = {c["id"]: c["source"] for c in nb["cells"]}
    assert sources["read_1"] == (
        "from casare_nb.nodes import data as nb_data\n"
        "read_1 = nb_data.read_csv(src, sep=',', limit=5)"
    )
    assert sources["join_1"] == (
        "join_1_frame = read_1.merge(None, on=['id'])\njoin_1_count = len(join_1_frame)  # 'join_1'"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"code": "x = {{ nope }}"}, "placeholder {{nope}} names no param"),
        ({"code": "x = {{ in.nope }}"}, "names no input"),
        ({"code": "x = {{ a b }}"}, "is not NAME, in.PORT or out.PORT"),
        ({"code": "x = = 1"}, "code does not parse"),
        ({"params": {"n": {"type": "integer", "default": "ten"}}}, "expects a whole number"),
        ({"params": {"n": {"type": "colour"}}}, "params.n.type"),
        ({"params": {"n": {"type": "choice"}}}, "a choice needs choices"),
        ({"params": {"class": {"type": "string"}}}, "is not a Python identifier"),
        ({"id": "NoDot"}, "is not category.name"),
        ({"imports": ["print(1)"]}, "is not an import"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_template_is_refused_with_a_one_line_reason(
    change: dict[str, Any], reason: str
) -> None:
    """A template with a bad schema raises TemplateError naming its file and the reason."""
    data = {**copy.deepcopy(READ), **change}
    with pytest.raises(TemplateError) as err:
        template_from_data(data, "bad.yaml")
    assert reason in str(err.value)
    assert str(err.value).startswith("bad.yaml: ")
    assert "\n" not in str(err.value)


def test_a_template_that_is_not_a_mapping_is_refused() -> None:
    """YAML that is a list or a string is not a template."""
    with pytest.raises(TemplateError, match="not a mapping"):
        template_from_data(["id", "x.y"], "list.yaml")


def test_the_palette_lists_broken_templates_last_with_their_reason() -> None:
    """Catalog.palette() gives every template as JSON and each broken one with its reason."""
    from casare_nb.core.graph import BrokenTemplate

    cat = CAT.model_copy(
        update={"broken": [BrokenTemplate(source="t/x.yaml", id="web.fetch", reason="bad")]}
    )
    palette = cat.palette()
    assert palette[-1] == {
        "id": "web.fetch",
        "name": "web.fetch",
        "category": "web",
        "broken": "bad",
    }
    ids = {p["id"] for p in palette}
    assert {"data.read", CODE_TEMPLATE, NOTE_TEMPLATE} <= ids
    json.dumps(palette)


# --------------------------------------------------------------------------- problems


def test_a_valid_graph_has_no_problems() -> None:
    """The two-node graph with its required input bound and the join's left fed is fine."""
    assert problems(two_nodes(), CAT) == {}


def test_missing_input_bad_value_and_unbound_required_param_are_shown_on_the_node() -> None:
    """Problems name the node: an unconnected required input, a value of the wrong type, a
    value below the minimum, a required param with no value, an unknown param."""
    g = Graph(
        nodes=[
            Node(id="read_1", template="data.read", params={"limit": "x", "sep": "|", "foo": 1}),
            Node(id="read_2", template="data.read", params={"path": "b", "limit": 0}),
            Node(id="join_1", template="data.join"),
        ]
    )
    found = problems(g, CAT)
    assert "path is required" in found["read_1"]
    assert "limit expects a whole number" in found["read_1"]
    assert "sep expects one of [',', ';']" in found["read_1"]
    assert "param 'foo' is not a param of data.read" in found["read_1"]
    assert found["read_2"] == ["limit must be at least 1"]
    assert found["join_1"] == ["input 'left' is not connected"]


def test_a_cycle_is_a_problem_on_each_of_its_nodes_and_cannot_be_saved() -> None:
    """Nodes on a cycle each show it; compiling raises GraphError naming the cycle."""
    g = Graph(
        nodes=[
            Node(id="a", template="data.join"),
            Node(id="b", template="data.join"),
            Node(id="c", template=CODE_TEMPLATE, code="x = 1"),
        ],
        edges=[
            Edge(source="a", source_port="frame", target="b", target_port="left"),
            Edge(source="b", source_port="frame", target="a", target_port="left"),
        ],
    )
    found = problems(g, CAT)
    assert "on a cycle: the nodes cannot be put in an order" in found["a"]
    assert "on a cycle: the nodes cannot be put in an order" in found["b"]
    assert "c" not in found
    with pytest.raises(GraphError, match=r"the graph has a cycle: (a -> b -> a|b -> a -> b)"):
        compile_graph(g, CAT)


def test_duplicate_ids_bad_ids_two_edges_into_one_input_and_bad_bindings_are_problems() -> None:
    """Graph-level and node-level structural problems are all reported."""
    g = Graph(
        inputs=[GraphInput(name="n", type="integer", default="x")],
        nodes=[
            Node(id="r", template="data.read", params={"path": "p"}),
            Node(id="r", template="data.read", params={"path": "p"}),
            Node(id="parameters", template=CODE_TEMPLATE, code=""),
            Node(id="not id", template=CODE_TEMPLATE, code=""),
            Node(id="j", template="data.join", bind={"sql": "nope"}),
            Node(id="g", template="web.gone"),
        ],
        edges=[
            Edge(source="r", source_port="frame", target="j", target_port="left"),
            Edge(source="r", source_port="frame", target="j", target_port="left2"),
            Edge(source="r", source_port="oops", target="j", target_port="right"),
            Edge(source="zz", source_port="frame", target="j", target_port="right"),
        ],
    )
    found = problems(g, CAT)
    assert "two nodes are called 'r'" in found[""]
    assert "input n: default expects a whole number" in found[""]
    assert found["parameters"] == ["id 'parameters' is reserved"]
    assert "is not a Python identifier" in found["not id"][0]
    assert "an edge ends at 'left2', which is not an input" in found["j"]
    assert "input from r.oops: r has no such output" in found["j"]
    assert "sql is bound to 'nope', which is not an input" in found["j"]
    assert "an edge joins a node that does not exist: zz -> j" in found[""]
    assert found["g"] == ["template 'web.gone' is missing"]


def test_a_code_node_feeding_a_template_input_must_assign_its_own_name() -> None:
    """A code node connected to a data input is told when its code does not assign it."""
    g = Graph(
        nodes=[
            Node(id="prep", template=CODE_TEMPLATE, code="frame = 1"),
            Node(id="j", template="data.join"),
        ],
        edges=[Edge(source="prep", source_port="out", target="j", target_port="left")],
    )
    assert problems(g, CAT)["prep"] == ["feeds j.left but does not assign prep"]
    g.nodes[0].code = "prep = load()"
    assert problems(g, CAT) == {}


# --------------------------------------------------------------------------- compiling


def test_the_notebook_has_the_parameters_cell_then_one_cell_per_node_in_topological_order() -> None:
    """Cells: the parameters cell from the inputs, then nodes ordered so every edge goes
    forward (a node listed first goes first among the free ones)."""
    g = two_nodes()
    g.nodes.reverse()  # join listed before the read it depends on
    g.nodes.append(Node(id="note_1", template=NOTE_TEMPLATE, code="# Report"))
    nb = compile_graph(g, CAT)
    assert [c["id"] for c in nb["cells"]] == ["parameters", "read_1", "join_1", "note_1"]
    params = nb["cells"][0]
    assert params["metadata"]["tags"] == ["parameters"]
    assert "src: str = 'a.csv'  # the file" in params["source"]
    assert nb["cells"][-1]["cell_type"] == "markdown"
    schema = read_schema(nb)
    assert schema.params["src"].default == "a.csv"
    assert nb["metadata"][GRAPH_KEY]["edges"] == [e.model_dump() for e in g.edges]


def test_a_replayed_template_tags_its_cell_to_run_on_every_resume() -> None:
    """A template marked replay: its cell carries the casare-always-run tag."""
    g = Graph(nodes=[Node(id="open_1", template="browser.open", params={"flag": False})])
    cell = compile_graph(g, CAT)["cells"][0]
    assert cell["metadata"]["tags"] == [ALWAYS_RUN_TAG]
    assert cell["source"] == "open_1 = ('http://x', False)"


def test_nodes_downstream_of_a_gate_are_skipped_when_it_is_none() -> None:
    """A node fed (directly or further down) by a condition's gate renders inside an if, its
    outputs None when skipped; the rendered cells run as Python."""
    g = Graph(
        nodes=[
            Node(id="cond", template="control.condition", params={"expression": "1 > 2"}),
            Node(id="j", template="data.join"),
            Node(id="after", template=CODE_TEMPLATE, code="seen = j_count"),
        ],
        edges=[
            Edge(source="cond", source_port="value", target="j", target_port="left"),
            Edge(source="j", source_port="count", target="after", target_port="after"),
        ],
    )
    nb = compile_graph(g, CAT)
    sources = [c["source"] for c in nb["cells"]]
    assert sources[1].startswith("if cond is not None:\n    j_frame = cond.merge")
    assert "    j_frame = None\n    j_count = None" in sources[1]
    assert sources[2].startswith("if cond is not None:\n    seen = j_count\nelse:")
    namespace: dict[str, Any] = {}
    for source in sources:
        exec(source, namespace)
    assert namespace["cond"] is None and namespace["j_frame"] is None
    assert "seen" not in namespace


def test_saving_again_keeps_the_outputs_of_cells_whose_source_did_not_change() -> None:
    """Recompiling over the old notebook keeps outputs of unchanged cells, drops changed."""
    g = two_nodes()
    nb = compile_graph(g, CAT)
    for cell in nb["cells"]:
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": cell["id"]}]
    g.nodes[0].params["limit"] = 7
    again = compile_graph(g, CAT, base=nb)
    outputs = {c["id"]: c["outputs"] for c in again["cells"]}
    assert outputs["read_1"] == []
    assert outputs["join_1"][0]["text"] == "join_1"


# --------------------------------------------------------------------------- reading


def test_a_hand_edited_node_cell_is_kept_and_flagged_never_overwritten() -> None:
    """A node cell whose source is not its template's rendering any more opens as edited
    and saving keeps the hand-written source; resetting it renders the template again."""
    nb = compile_graph(two_nodes(), CAT)
    nb["cells"][1]["source"] += "\nprint('mine')"
    loaded = read_graph(nb, CAT)
    assert loaded.edited == ["read_1"]
    node = loaded.graph.node("read_1")
    assert node is not None and node.edited and node.code and node.code.endswith("print('mine')")
    again = compile_graph(loaded.graph, CAT, base=nb)
    assert again["cells"][1]["source"].endswith("print('mine')")
    node.edited, node.code = False, None
    assert "mine" not in compile_graph(loaded.graph, CAT)["cells"][1]["source"]


def test_a_cell_whose_template_changed_since_is_kept_and_listed_not_re_rendered() -> None:
    """An untouched cell (its sha256 as saved) of a template that changed since is listed
    as updated, kept as it is on save, and renders the new template once reset."""
    nb = compile_graph(two_nodes(), CAT)
    newer = {**READ, "code": READ["code"] + "  # v2"}
    cat2 = Catalog.of(template_from_data(d) for d in (newer, JOIN, COND, OPEN))
    loaded = read_graph(nb, cat2)
    assert loaded.edited == [] and loaded.updated == ["read_1"]
    assert compile_graph(loaded.graph, cat2)["cells"][1]["source"] == nb["cells"][1]["source"]
    node = loaded.graph.node("read_1")
    assert node is not None
    node.edited, node.code = False, None
    assert compile_graph(loaded.graph, cat2)["cells"][1]["source"].endswith("# v2")


def test_a_plain_notebook_opens_as_code_and_note_nodes_with_edges_from_names() -> None:
    """Cells without metadata become code nodes (markdown: notes), edges link the cell that
    defines a name to the cells that use it, and every node gets a position."""
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": "# Hi"},
            {"cell_type": "code", "id": "a", "metadata": {}, "source": "x = 1", "outputs": []},
            {"cell_type": "code", "id": "b", "metadata": {}, "source": ["y = 2\n", "z = 3"]},
            {"cell_type": "code", "id": "c", "metadata": {}, "source": "print(x + y)"},
            {"cell_type": "raw", "id": "r", "metadata": {}, "source": "raw"},
        ],
    }
    loaded = read_graph(nb, CAT)
    g = loaded.graph
    assert [(n.id, n.template) for n in g.nodes] == [
        ("intro", NOTE_TEMPLATE),
        ("a", CODE_TEMPLATE),
        ("b", CODE_TEMPLATE),
        ("c", CODE_TEMPLATE),
    ]
    assert g.nodes[2].code == "y = 2\nz = 3"
    assert {(e.source, e.target) for e in g.edges} == {("a", "c"), ("b", "c")}
    assert len({(n.x, n.y) for n in g.nodes}) == 4
    again = compile_graph(g, CAT)
    assert [c["source"] for c in again["cells"]] == [
        "# Hi",
        "x = 1",
        "y = 2\nz = 3",
        "print(x + y)",
    ]


def test_a_hand_written_parameters_cell_is_kept_and_gives_inputs_to_bind() -> None:
    """A plain notebook's parameters cell stays as written; its simple params become inputs."""
    source = "n: int = 3\nname = 'x'\nmode: Literal['a', 'b'] = 'a'"
    nb = {
        "metadata": {},
        "cells": [
            {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": source}
        ],
    }
    loaded = read_graph(nb, CAT)
    assert loaded.graph.parameters_source == source
    assert [(i.name, i.type, i.default) for i in loaded.graph.inputs] == [
        ("n", "integer", 3),
        ("name", "string", "x"),
    ]
    again = compile_graph(loaded.graph, CAT)
    assert again["cells"][0]["source"] == source
    assert read_graph(again, CAT).warnings == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda nb: nb["metadata"].__setitem__(GRAPH_KEY, "garbage"),
        lambda nb: nb["metadata"][GRAPH_KEY].__setitem__("edges", [{"source": 1}]),
        lambda nb: nb["cells"][1]["metadata"].__setitem__(NODE_KEY, {"id": "read_1"}),
        lambda nb: nb["cells"][1]["metadata"].__setitem__(NODE_KEY, [1, 2]),
        lambda nb: nb["cells"][1]["metadata"][NODE_KEY].__setitem__("id", "1 bad"),
    ],
)
def test_invalid_casare_metadata_opens_as_plain_code_nodes_with_a_warning(damage: Any) -> None:
    """Broken graph or node metadata: a warning, and saving again writes every cell's
    source as it was."""
    nb = compile_graph(two_nodes(), CAT)
    damage(nb)
    loaded = read_graph(nb, CAT)
    assert loaded.warnings
    again = {c["source"] for c in compile_graph(loaded.graph, CAT)["cells"]}
    for cell in nb["cells"]:
        assert cell["source"] in again


def test_a_node_of_a_missing_template_keeps_its_cell() -> None:
    """A node whose template is gone opens with its source kept and a warning; it saves."""
    nb = compile_graph(two_nodes(), CAT)
    cat = Catalog.of(template_from_data(d) for d in (JOIN,))
    loaded = read_graph(nb, cat)
    assert any("no template 'data.read'" in w for w in loaded.warnings)
    again = compile_graph(loaded.graph, cat)
    assert again["cells"][1]["source"] == nb["cells"][1]["source"]


def test_auto_layout_puts_each_node_right_of_what_feeds_it() -> None:
    """Layout: a node's column is after every predecessor's; no two nodes share a place; a
    long chain wraps to a band below after 5 columns."""
    g = auto_layout(two_nodes(), CAT)
    a, b = g.nodes
    assert b.x > a.x
    g2 = Graph(nodes=[Node(id=f"n{i}", template=CODE_TEMPLATE, code="") for i in range(5)])
    placed = auto_layout(g2, CAT)
    assert len({(n.x, n.y) for n in placed.nodes}) == 5
    chain = Graph(
        nodes=[Node(id=f"c{i}", template=CODE_TEMPLATE, code="") for i in range(12)],
        edges=[
            Edge(source=f"c{i}", source_port="out", target=f"c{i + 1}", target_port="after")
            for i in range(11)
        ],
    )
    wrapped = auto_layout(chain, CAT).nodes
    assert [n.x for n in wrapped[:5]] == sorted({n.x for n in wrapped})  # 5 columns, then
    assert wrapped[5].x == wrapped[0].x and wrapped[5].y > wrapped[4].y  # the next band
    assert wrapped[10].y > wrapped[5].y


# --------------------------------------------------------------------------- properties

CODES = ["x = 1", "print('hi')\ny = 2", "", "def f():\n    return 1", "s = '''a\nb'''"]


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """Random valid graphs over CAT: unique ids, edges only forward in a hidden order,
    single inputs fed at most once, params of the right types, positions on a grid."""
    ids = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
                lambda s: (
                    s not in ("parameters", "if", "in", "is", "or", "and", "not", "for")
                    and s not in ("as", "def", "del", "try", "with", "else", "elif", "pass")
                )
            ),
            min_size=1,
            max_size=12,
            unique=True,
        )
    )
    names = ["code.python", "note.markdown", "data.read", "data.join", "control.condition"]
    nodes: list[Node] = []
    for nid in ids:
        kind = draw(st.sampled_from([*names, "browser.open"]))
        x, y = draw(st.integers(1, 2000)) / 2, draw(st.integers(1, 2000)) / 2  # placed
        if kind in (CODE_TEMPLATE, NOTE_TEMPLATE):
            nodes.append(Node(id=nid, template=kind, code=draw(st.sampled_from(CODES)), x=x, y=y))
            continue
        params: dict[str, Any] = {}
        if kind == "data.read":
            params = {
                "path": draw(st.text(max_size=10).filter(lambda s: "\n" not in s)),
                "limit": draw(st.integers(1, 10**6)),
            }
        elif kind == "data.join":
            params = {"on": draw(st.lists(st.text(max_size=3), max_size=3))}
        elif kind == "control.condition":
            params = {"expression": draw(st.sampled_from(["1 > 0", "value", "len([]) == 0"]))}
        else:
            params = {"flag": draw(st.booleans())}
        nodes.append(Node(id=nid, template=kind, params=params, x=x, y=y))
    edges: list[Edge] = []
    fed: set[tuple[str, str]] = set()
    for j, target in enumerate(nodes):
        tpl: NodeTemplate = CAT.templates[target.template]
        for port, spec in tpl.inputs.items():
            sources = [n for n in nodes[:j] if CAT.templates[n.template].outputs]
            if not sources or draw(st.booleans()):
                continue
            count = draw(st.integers(1, 3)) if spec.multiple else 1
            for _ in range(count):
                src = draw(st.sampled_from(sources))
                sport = draw(st.sampled_from(list(CAT.templates[src.template].outputs)))
                if (target.id, port) in fed and not spec.multiple:
                    continue
                edge = Edge(source=src.id, source_port=sport, target=target.id, target_port=port)
                if edge not in edges:
                    edges.append(edge)
                    fed.add((target.id, port))
    shuffled = draw(st.permutations(nodes))
    inputs = [
        GraphInput(name=f"in_{i}", type="integer", default=draw(st.integers(-5, 5)))
        for i in range(draw(st.integers(0, 2)))
    ]
    return Graph(nodes=list(shuffled), edges=edges, inputs=inputs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_valid_graphs_compile_to_notebooks_that_read_back_as_the_same_graph(
    g: Graph,
) -> None:
    """graph -> notebook -> graph is the identity (nodes in notebook order), with no warning
    and no node taken for edited; compiling the read-back graph gives the same notebook."""
    nb = compile_graph(g, CAT)
    json.dumps(nb)
    loaded = read_graph(json.loads(json.dumps(nb)), CAT)
    assert loaded.warnings == [] and loaded.edited == [] and loaded.updated == []
    assert loaded.graph.canonical() == g.canonical()
    assert compile_graph(loaded.graph, CAT) == nb
    order = topological_order(g)
    position = {nid: i for i, nid in enumerate(order)}
    assert all(position[e.source] < position[e.target] for e in g.edges)


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_every_rendered_cell_of_a_random_graph_parses_as_python(g: Graph) -> None:
    """Whatever the params and the gates, each code cell is Python (top-level await ok)."""
    import ast

    wrong = []
    for cell in compile_graph(g, CAT)["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            compile(
                cell["source"],
                "<cell>",
                "exec",
                flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )
        except SyntaxError as exc:
            wrong.append((cell["id"], exc.msg))
    assert wrong == []

"""Build ``workflows/scrape_report.ipynb`` with the graph editor's model, as the editor
would save it: browser nodes scrape the local test site (``python -m casare_nb.site``), data
nodes write a report.

    .venv/bin/python scripts/build_scrape_report.py            # (re)write the workflow
    .venv/bin/python scripts/build_scrape_report.py --check    # exit 1 if it is out of date

tests/test_example_graph.py checks that the committed notebook is what this builds, and
runs it (``casare-nb run``, the orchestrator, a resume that replays the browser nodes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from casare_nb.core.graph import Edge, Graph, GraphInput, Node, auto_layout, compile_graph
from casare_nb.nodes.catalog import load_catalog
from casare_nb.widgets.graph_session import GraphSession

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "workflows" / "scrape_report.ipynb"

RECORD = """\
import casare_nb

casare_nb.output("greeting", greeting)
casare_nb.output("products_in_stock", int(len(in_stock)))
casare_nb.output("report", report)
print(greeting, "-", len(in_stock), "products in stock ->", report)"""


def build() -> Graph:
    """The workflow as a graph: each node one cell."""
    nodes = [
        Node(
            id="about",
            template="note.markdown",
            code="# Scrape the test site's prices and write a report\n\n"
            "Built with `GraphEditor`: sign up with the form, read the price table, wait for "
            "the slow element, then keep the products in stock and write an HTML report. "
            "Serve the site with `python -m casare_nb.site` and pass its address as "
            "`site_url`.",
        ),
        Node(id="open_site", template="browser.open_page", bind={"url": "site_url"}),
        Node(id="form_page", template="browser.goto", params={"url": "/form"}),
        Node(id="fill_name", template="browser.fill", params={"selector": "#name"}),
        Node(
            id="fill_email",
            template="browser.fill",
            params={"selector": "#email", "value": "ada@example.com"},
        ),
        Node(id="submit", template="browser.click", params={"selector": "#submit"}),
        Node(id="greeting", template="browser.extract_text", params={"selector": "#thanks"}),
        Node(id="table_page", template="browser.goto", params={"url": "/table"}),
        Node(id="prices", template="browser.extract_table", params={"selector": "#prices"}),
        Node(id="slow_page", template="browser.goto", params={"url": "/slow?delay_ms=800"}),
        Node(id="late", template="browser.wait_for", params={"selector": "#late"}),
        Node(id="close_browser", template="browser.close"),
        Node(
            id="in_stock",
            template="data.sql",
            params={
                "query": "select product, price, stock, round(price * stock, 2) as stock_value\n"
                "from a where stock > 0 order by stock_value desc"
            },
        ),
        Node(id="report", template="data.write_report", params={"title": "Prices in stock"}),
        Node(id="record", template="code.python", code=RECORD),
    ]
    nodes[3].bind = {"value": "customer"}
    nodes[10].bind = {"timeout_s": "wait_s"}
    nodes[13].bind = {"path": "report_path"}

    def edge(src: str, sport: str, dst: str, dport: str) -> Edge:
        return Edge(source=src, source_port=sport, target=dst, target_port=dport)

    edges = [
        edge("open_site", "page", "form_page", "page"),
        edge("form_page", "page", "fill_name", "page"),
        edge("fill_name", "page", "fill_email", "page"),
        edge("fill_email", "page", "submit", "page"),
        edge("submit", "page", "greeting", "page"),
        edge("submit", "page", "table_page", "page"),
        edge("greeting", "text", "table_page", "after"),
        edge("table_page", "page", "prices", "page"),
        edge("prices", "table", "slow_page", "after"),
        edge("table_page", "page", "slow_page", "page"),
        edge("slow_page", "page", "late", "page"),
        edge("late", "page", "close_browser", "page"),
        edge("prices", "table", "in_stock", "a"),
        edge("in_stock", "frame", "report", "frame"),
        edge("report", "path", "record", "after"),
        edge("greeting", "text", "record", "after"),
    ]
    inputs = [
        GraphInput(name="site_url", default="http://127.0.0.1:8000", help="the test site"),
        GraphInput(name="customer", default="Ada Lovelace", help="the name to sign up with"),
        GraphInput(
            name="wait_s", type="number", default=5.0, help="how long the slow element may take"
        ),
        GraphInput(name="report_path", default="reports/prices.html", help="the HTML report"),
    ]
    return Graph(nodes=nodes, edges=edges, inputs=inputs)


def main(argv: list[str]) -> int:
    catalog = load_catalog(TARGET)
    graph = auto_layout(build(), catalog)
    session = GraphSession(TARGET.with_name(".scrape_report.check.ipynb"), catalog)
    session.graph = graph
    wrong = session.check()
    if wrong:
        print(f"the graph has problems: {wrong}", file=sys.stderr)
        return 1
    if "--check" in argv:
        current = json.loads(TARGET.read_text("utf-8")) if TARGET.exists() else None
        if current != compile_graph(graph, catalog):
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {__file__}", file=sys.stderr)
            return 1
        return 0
    session.path = TARGET
    print(session.save())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

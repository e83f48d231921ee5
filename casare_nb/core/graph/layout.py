"""Auto-layout: columns by dependency, rows by where the predecessors sit, a long chain
wrapped into bands. Pure.
"""

from __future__ import annotations

from casare_nb.core.graph.model import Graph, GraphError, topological_order
from casare_nb.core.graph.templates import Catalog

# --------------------------------------------------------------------------- layout

LAYER_DX = 260.0
ROW_DY = 120.0
WRAP = 5  # columns before a long graph wraps to the next band
BAND_GAP = 60.0


def auto_layout(graph: Graph, catalog: Catalog) -> Graph:
    """The graph with every node placed: a column per layer (longest path from a source),
    rows ordered by where their predecessors sit; past WRAP columns the layers go on in a
    band below (a long chain reads like lines of text). Nodes of a cycle go after the rest."""
    try:
        order = topological_order(graph)
    except GraphError:
        order = [n.id for n in graph.nodes]
    preds: dict[str, list[str]] = {nid: [] for nid in order}
    for e in graph.edges:
        if e.source in preds and e.target in preds:
            preds[e.target].append(e.source)
    layer: dict[str, int] = {}
    for nid in order:
        layer[nid] = 1 + max((layer[p] for p in preds[nid] if p in layer), default=-1)
    columns: dict[int, list[str]] = {}
    for nid in order:
        columns.setdefault(layer[nid], []).append(nid)
    row: dict[str, float] = {}
    for col in sorted(columns):
        members = columns[col]

        def key(nid: str, members: list[str] = members) -> tuple[float, int]:
            ps = [row[p] for p in preds[nid] if p in row]
            return (sum(ps) / len(ps) if ps else float(members.index(nid)), members.index(nid))

        for r, nid in enumerate(sorted(members, key=key)):
            row[nid] = float(r)
    # a long chain wraps like text: WRAP columns per band, bands one under the other
    bands: dict[int, float] = {}
    for col, members in columns.items():
        band = col // WRAP
        bands[band] = max(bands.get(band, 0.0), float(len(members)))
    top, offsets = 40.0, {}
    for band in sorted(bands):
        offsets[band] = top
        top += ROW_DY * bands[band] + BAND_GAP
    placed = {
        nid: (
            40.0 + LAYER_DX * (layer[nid] % WRAP),
            offsets[layer[nid] // WRAP] + ROW_DY * row[nid],
        )
        for nid in order
    }
    nodes = [n.model_copy(update={"x": placed[n.id][0], "y": placed[n.id][1]}) for n in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})

"""The dependency graph of stream tables and their sources.

Nodes are tables (by oid) and stream tables; an edge runs from what is read to what reads it.
Today sources are base tables only, so every stream table is a root's child; the graph is
already the place where stream tables over stream tables will be ordered.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from scheduler.errors import CycleDetected
from walstream.catalog import StreamTable


def dependency_graph(tables: Iterable[StreamTable]) -> nx.DiGraph[tuple[str, int]]:
    graph: nx.DiGraph[tuple[str, int]] = nx.DiGraph()
    for st in tables:
        graph.add_node(("st", st.id), stream_table=st)
        for oid in st.source_oids:
            graph.add_edge(("table", oid), ("st", st.id))
    return graph


def refresh_order(tables: Iterable[StreamTable]) -> list[StreamTable]:
    """Stream tables in an order where each comes after everything it reads."""
    graph = dependency_graph(tables)
    try:
        order = list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible as exc:
        cycle = nx.find_cycle(graph)
        raise CycleDetected(
            "stream tables depend on each other in a cycle",
            detail=" -> ".join(str(edge[0]) for edge in cycle),
            hint="break the cycle by removing one of the dependencies",
        ) from exc
    return [graph.nodes[node]["stream_table"] for node in order if node[0] == "st"]

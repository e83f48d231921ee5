"""What the graph editor's node cells call at run time, one module per category.

A node template (``casare_nb/nodes/templates/<category>/*.yaml``, see docs/graph-editor.md)
renders into a short cell that imports one of these modules and calls it, so the notebook
stays readable and runnable by hand: :mod:`.browser` (Playwright, one browser per run),
:mod:`.data` (CSV/Parquet, DuckDB SQL, filter/select/join), :mod:`.http` (requests with
retries, JSON to a DataFrame), :mod:`.files` (list/move/archive) and :mod:`.flow`
(sub-workflows, for-each, wait). Importing this package imports none of them.
"""

"""Tests for casare_nb.core.cells: static cell name analysis and resume replay planning."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

import pytest
from pydantic import ValidationError

from casare_nb.core.cells import (
    ALWAYS_RUN_TAG,
    WILDCARD,
    CellNames,
    cell_names,
    replay_plan,
    source_sha256,
    touched_names,
)


def defines(source: str) -> frozenset[str]:
    return cell_names(source).defines


def uses(source: str) -> frozenset[str]:
    return cell_names(source).uses


def plan(
    sources: Sequence[str],
    *,
    upto: int | None = None,
    missing: Collection[str] = (),
    tags: Sequence[Collection[str]] | None = None,
) -> list[int]:
    return replay_plan(
        sources,
        tags if tags is not None else [() for _ in sources],
        upto=len(sources) if upto is None else upto,
        missing=missing,
    )


# --------------------------------------------------------------------------- cell_names


def test_simple_assignment_defines_target_and_uses_value_names() -> None:
    """A plain assignment defines its target and uses the names on the right."""
    names = cell_names("total = price * qty")
    assert names == CellNames(
        defines=frozenset({"total"}), uses=frozenset({"price", "qty"}), parsed=True
    )


def test_cell_names_is_frozen() -> None:
    """CellNames is immutable."""
    names = cell_names("x = 1")
    with pytest.raises(ValidationError):
        names.parsed = False


def test_empty_and_comment_only_cells_parse_to_nothing() -> None:
    """An empty or comment-only cell parses and has no names."""
    for source in ("", "   \n", "# just a note\n"):
        assert cell_names(source) == CellNames(defines=frozenset(), uses=frozenset(), parsed=True)


def test_imports_define_alias_or_top_package() -> None:
    """`import a.b` defines a, `as` aliases define the alias, from-imports the imported name."""
    source = "import os.path\nimport numpy as np\nfrom pathlib import Path, PurePath as PP"
    assert defines(source) == {"os", "np", "Path", "PP"}
    assert uses(source) == frozenset()


def test_star_import_defines_wildcard() -> None:
    """`from m import *` may bind anything, reported as the WILDCARD marker."""
    assert defines("from math import *") == {WILDCARD}


def test_tuple_list_and_starred_targets_are_all_defined() -> None:
    """Tuple, nested and starred unpacking define every target name."""
    assert defines("a, (b, *rest), [c] = f()") == {"a", "b", "rest", "c"}
    assert defines("x = y = 0") == {"x", "y"}


def test_annotated_assignment_defines_and_bare_annotation_does_not() -> None:
    """`x: int = 1` defines x and uses the annotation; a bare `y: int` binds nothing."""
    assert cell_names("x: int = 1").defines == {"x"}
    assert "int" in uses("x: int = 1")
    assert defines("y: int") == frozenset()


def test_augmented_assignment_defines_and_uses_target() -> None:
    """`n += step` both reads and rebinds n."""
    names = cell_names("n += step")
    assert names.defines == {"n"}
    assert names.uses == {"n", "step"}


def test_def_and_class_define_their_names() -> None:
    """def/class define their names; decorators, defaults and bases are uses."""
    source = (
        "@register\n"
        "def load(path, retries=DEFAULT_RETRIES):\n"
        "    return path\n"
        "class Model(BaseModel):\n"
        "    size = 3\n"
    )
    names = cell_names(source)
    assert names.defines == {"load", "Model"}
    assert {"register", "DEFAULT_RETRIES", "BaseModel"} <= names.uses


def test_function_body_loads_are_uses_but_locals_and_params_are_not() -> None:
    """Names read inside a function body are uses; its parameters and locals are neither."""
    source = "def score(row):\n    weight = WEIGHTS[row]\n    return weight * factor\n"
    names = cell_names(source)
    assert names.defines == {"score"}
    assert {"WEIGHTS", "factor"} <= names.uses
    assert not {"row", "weight"} & (names.defines | names.uses)


def test_method_body_reads_global_even_if_class_binds_same_name() -> None:
    """A method reading `x` reads the global x, so x is a use despite a class attribute x."""
    source = "class A:\n    x = 1\n    def get(self):\n        return x\n"
    assert "x" in uses(source)
    assert defines(source) == {"A"}


def test_with_as_targets_are_defined() -> None:
    """`with ... as name` defines name (also for several items and async with)."""
    source = "with open(path) as fh, lock as held:\n    text = fh.read()\n"
    names = cell_names(source)
    assert {"fh", "held", "text"} <= names.defines
    assert {"open", "path", "lock"} <= names.uses
    assert "ctx" in defines("async with session() as ctx:\n    pass")


def test_for_loop_target_and_body_are_defined() -> None:
    """A for loop defines its target names and whatever its body binds."""
    names = cell_names("for key, value in pairs:\n    last = value\n")
    assert names.defines == {"key", "value", "last"}
    assert "pairs" in names.uses


def test_except_as_and_match_capture_names_are_defined() -> None:
    """`except E as err` and match-case captures bind names."""
    assert "err" in defines("try:\n    pass\nexcept ValueError as err:\n    pass\n")
    source = (
        "match cmd:\n"
        "    case [verb, *args]:\n"
        "        pass\n"
        "    case {'k': v, **others}:\n"
        "        pass\n"
    )
    assert {"verb", "args", "v", "others"} <= defines(source)


def test_walrus_defines_name_even_inside_comprehension() -> None:
    """`:=` binds in the cell's scope, including from inside a comprehension."""
    assert defines("if (n := len(items)) > 3:\n    pass\n") == {"n"}
    assert defines("hits = [last := x for x in xs]") == {"hits", "last"}


def test_comprehension_variable_does_not_leak_as_define() -> None:
    """Comprehension loop variables are neither defines nor uses of the cell."""
    names = cell_names("squares = [k * k for k in range(n) if k != skip]\n")
    assert names.defines == {"squares"}
    assert "k" not in names.uses
    assert {"n", "skip", "range"} <= names.uses
    assert defines("pairs = {k: v for k, v in items}\ng = (z for z in zs)") == {"pairs", "g"}


def test_comprehension_first_iterable_is_evaluated_outside() -> None:
    """In `[x for x in x]` the iterable x is the notebook-level x, so x is used."""
    assert "x" in uses("y = [x for x in x]")


def test_lambda_parameters_are_local() -> None:
    """Lambda parameters are not uses; free names in its body and its defaults are."""
    names = cell_names("f = lambda a, b=base: a + b + offset")
    assert names.defines == {"f"}
    assert {"base", "offset"} <= names.uses
    assert not {"a", "b"} & names.uses


def test_global_assignment_inside_function_defines_name() -> None:
    """`global x` plus an assignment inside a def defines x at notebook level."""
    source = "def reset():\n    global counter\n    counter = 0\n    local_only = 1\n"
    assert defines(source) == {"reset", "counter"}


def test_global_read_inside_function_is_a_use() -> None:
    """A name declared global and only read inside a def is a use, not a define."""
    names = cell_names("def peek():\n    global state\n    return state\n")
    assert names.defines == {"peek"}
    assert "state" in names.uses


def test_del_counts_as_define_and_use() -> None:
    """`del x` changes x (a define) and needs it to exist (a use)."""
    names = cell_names("del scratch")
    assert names.defines == {"scratch"}
    assert names.uses == {"scratch"}


def test_attribute_and_subscript_stores_define_and_use_base_name() -> None:
    """`df["a"] = 1` and `obj.x = 2` mutate the base object: it is both used and defined."""
    names = cell_names('df["a"] = 1\nobj.inner.x = 2\n')
    assert names.defines == {"df", "obj"}
    assert {"df", "obj"} <= names.uses


def test_method_call_marks_receiver_as_used_and_mutated() -> None:
    """A statement `lst.append(1)` (or awaited call) uses lst and reports it as changed."""
    names = cell_names("lst.append(1)\nawait page.goto(url)\nd['k'].add(2)")
    assert {"lst", "page", "d"} <= names.uses
    assert names.defines == {"lst", "page", "d"}


def test_method_call_whose_result_is_used_does_not_mutate_receiver() -> None:
    """`conn = sqlite3.connect(p)` defines conn only; the module it calls is just used."""
    names = cell_names("conn = sqlite3.connect(p)\nprint(df.describe())")
    assert names.defines == {"conn"}
    assert {"sqlite3", "p", "df", "print"} <= names.uses


def test_mutation_inside_function_body_is_not_a_define() -> None:
    """An in-place change inside a def only happens when called, so it is not a define."""
    names = cell_names("def add(v):\n    registry.append(v)\n    cache[v] = 1\n")
    assert names.defines == {"add"}
    assert {"registry", "cache"} <= names.uses


def test_top_level_await_is_supported() -> None:
    """A cell with top-level await (IPython autoawait) parses normally."""
    names = cell_names("html = await page.content()")
    assert names.parsed
    assert "html" in names.defines
    assert "page" in names.uses


def test_line_magics_and_shell_lines_are_ignored() -> None:
    """`%magic` and `!cmd` lines become no-ops and the rest of the cell is analysed."""
    source = "%matplotlib inline\n!pip list\n   %load_ext autoreload\nx = y + 1\n"
    names = cell_names(source)
    assert names.parsed
    assert names.defines == {"x"}
    assert names.uses == {"y"}


def test_shell_and_magic_assignments_define_target() -> None:
    """`x = !cmd` and `y = %magic` define x and y."""
    names = cell_names("files = !ls -la\nenv = %env\nfirst, second = !echo a b\n")
    assert names.parsed
    assert names.defines == {"files", "env", "first", "second"}


def test_shell_interpolation_counts_as_use() -> None:
    """Names interpolated into a shell line with `{expr}` or `$name` are uses."""
    names = cell_names("!cp {src_path} $dest_dir\nout = !wc -l {report.name}\n")
    assert {"src_path", "dest_dir", "report"} <= names.uses
    assert names.defines == {"out"}


def test_shell_line_inside_block_keeps_block_valid() -> None:
    """A shell line inside a for loop is replaced without breaking indentation."""
    names = cell_names("for name in names:\n    !echo {name}\n")
    assert names.parsed
    assert names.defines == {"name"}


def test_time_magic_analyses_its_statement() -> None:
    """`%time stmt` runs stmt in the namespace, so its names count."""
    names = cell_names("%time result = slow(data)")
    assert names.defines == {"result"}
    assert {"slow", "data"} <= names.uses


def test_run_magic_may_define_anything() -> None:
    """`%run script.py` may bind any name: WILDCARD is defined."""
    assert WILDCARD in defines("%run helpers.py")


def test_modulo_continuation_line_is_not_a_magic() -> None:
    """A continuation line starting with `%` is Python's modulo, not a magic."""
    names = cell_names("rest = (total\n        % size)\n")
    assert names.parsed
    assert names.uses == {"total", "size"}


def test_cell_magic_is_not_parsed() -> None:
    """A `%%bash` cell is opaque: parsed is False and nothing is reported."""
    for source in ("%%bash\necho hi > out.txt\n", "\n%%capture cap\nx = 1\n"):
        assert cell_names(source) == CellNames(defines=frozenset(), uses=frozenset(), parsed=False)


def test_syntax_error_is_not_parsed() -> None:
    """A syntax error gives parsed False with empty name sets."""
    assert cell_names("def broken(:\n    pass") == CellNames(
        defines=frozenset(), uses=frozenset(), parsed=False
    )


def test_touched_names_is_defines_union_uses() -> None:
    """touched_names returns every name a cell reads or changes."""
    source = "import math\nr = math.sqrt(area)\n"
    names = cell_names(source)
    assert touched_names(source) == names.defines | names.uses
    assert {"math", "r", "area"} <= touched_names(source)
    assert touched_names("%%bash\nls") == frozenset()


def test_source_sha256_is_hex_digest_of_utf8() -> None:
    """source_sha256 is the SHA-256 hex digest of the UTF-8 source and detects edits."""
    source = "x = 'é'\n"
    assert source_sha256(source) == hashlib.sha256(source.encode("utf-8")).hexdigest()
    assert source_sha256(source) != source_sha256(source + " ")
    assert len(source_sha256("")) == 64


# --------------------------------------------------------------------------- replay_plan


def test_replay_open_file_defined_earlier() -> None:
    """An unpicklable file opened in cell 1 and used in cell 3 is rebuilt by replaying cell 1."""
    sources = [
        "import json",
        "fh = open('log.txt', 'a')",
        "rows = [1, 2, 3]",
        "fh.write(json.dumps(rows))",
    ]
    assert plan(sources, upto=3, missing={"fh"}) == [1]


def test_replay_restored_dependency_is_not_replayed() -> None:
    """A missing name whose cell reads a restored name replays only that cell."""
    sources = ["import sqlite3", "path = 'db.sqlite'", "conn = sqlite3.connect(path)", "q = 1"]
    assert plan(sources, upto=4, missing={"conn"}) == [2]


def test_replay_missing_dependency_is_transitive() -> None:
    """If the defining cell uses another missing name, its definer is replayed too."""
    sources = ["import sqlite3", "path = make_path()", "conn = sqlite3.connect(path)", "q = 1"]
    assert plan(sources, upto=4, missing={"conn", "path"}) == [1, 2]


def test_replay_augassign_chain_pulls_in_original_definer() -> None:
    """`x += 1` on a missing name needs the earlier `x = ...` replayed as well."""
    sources = ["counter = Counter()", "other = 1", "counter += extra", "counter += more", "z = 0"]
    assert plan(sources, upto=5, missing={"counter"}) == [0, 2, 3]


def test_replay_stops_at_latest_plain_definer() -> None:
    """A later plain re-assignment supersedes earlier ones: older definers are skipped."""
    sources = ["page = browser.new_page()", "page = browser.new_page()", "title = page.title()"]
    assert plan(sources, upto=3, missing={"page"}) == [1]


def test_replay_includes_mutations_of_missing_object() -> None:
    """Cells that mutate a missing object (`page.goto(...)`) are replayed to rebuild its state."""
    sources = [
        "page = browser.new_page()",
        "page.goto(url)",
        "n = 3",
        "page.click('#next')",
        "print(n)",
    ]
    assert plan(sources, upto=4, missing={"page"}) == [0, 1, 3]


def test_replay_always_run_cells_are_included() -> None:
    """Cells tagged ALWAYS_RUN_TAG before upto are always replayed, later ones are not."""
    sources = ["import os", "setup_logging()", "x = 1", "y = 2", "seed_rng()"]
    tags: list[list[str]] = [[], [ALWAYS_RUN_TAG], [], [], [ALWAYS_RUN_TAG]]
    assert plan(sources, upto=4, missing=(), tags=tags) == [1]


def test_replay_always_run_cell_needs_are_satisfied() -> None:
    """The missing names an always-run cell uses pull in their definers."""
    sources = ["sock = connect()", "x = 1", "sock.send(b'hello')", "y = 2"]
    tags: list[set[str]] = [set(), set(), {ALWAYS_RUN_TAG, "other"}, set()]
    assert plan(sources, upto=4, missing={"sock"}, tags=tags) == [0, 2]


def test_replay_unparsable_cell_is_included_conservatively() -> None:
    """A cell that cannot be analysed is replayed if a name is still needed when reached."""
    sources = ["handle = acquire()", "%%bash\necho hi", "value = 1", "use(handle)"]
    assert plan(sources, upto=4, missing={"handle"}) == [0, 1]
    # Once the needed name is satisfied by a later cell, the opaque cell is not replayed.
    later = ["%%bash\necho hi", "handle = acquire()", "use(handle)"]
    assert plan(later, upto=3, missing={"handle"}) == [1]


def test_replay_syntax_error_cell_is_included_while_needed() -> None:
    """A cell with a syntax error is treated like an opaque cell."""
    sources = ["lock = make_lock()", "def broken(:", "x = 1"]
    assert plan(sources, upto=3, missing={"lock"}) == [0, 1]


def test_replay_wildcard_cell_is_included_while_needed() -> None:
    """A star import may define a missing name, so it is replayed while names are needed."""
    sources = ["tool = 1", "from helpers import *", "x = 2"]
    assert plan(sources, upto=3, missing={"tool"}) == [0, 1]
    assert plan(sources, upto=3, missing=()) == []


def test_replay_nothing_missing_gives_only_always_run_cells() -> None:
    """With nothing missing, only the always-run cells are replayed."""
    sources = ["fh = open('x')", "import time", "y = fh.read()"]
    assert plan(sources, upto=3, missing=()) == []
    tags = [[], [ALWAYS_RUN_TAG], []]
    assert plan(sources, upto=3, missing=(), tags=tags) == [1]


def test_replay_ignores_cells_at_or_after_upto() -> None:
    """Only cells before upto are candidates; upto 0 replays nothing."""
    sources = ["a = 1", "lock = Lock()", "use(lock)"]
    assert plan(sources, upto=1, missing={"lock"}) == []
    assert plan(sources, upto=0, missing={"lock"}, tags=[[ALWAYS_RUN_TAG]] * 3) == []


def test_replay_name_defined_nowhere_replays_nothing() -> None:
    """A missing name no earlier cell defines does not drag in unrelated cells."""
    sources = ["a = 1", "b = a + 1"]
    assert plan(sources, upto=2, missing={"ghost"}) == []


def test_replay_function_defined_earlier_uses_missing_global() -> None:
    """A def whose body reads a missing global makes that global's definer needed too."""
    sources = ["conn = connect()", "def fetch():\n    return conn.query()", "x = 1"]
    assert plan(sources, upto=3, missing={"fetch", "conn"}) == [0, 1]


def test_replay_plan_is_sorted_and_handles_magic_cells() -> None:
    """The plan is ascending and shell assignments count as definitions."""
    sources = ["files = !ls", "%matplotlib inline", "handle = open(files[0])", "x = 1"]
    assert plan(sources, upto=4, missing={"handle", "files"}) == [0, 2]


def test_replay_plan_validates_arguments() -> None:
    """Mismatched tag count or out-of-range upto raise ValueError."""
    with pytest.raises(ValueError):
        replay_plan(["a = 1"], [], upto=1, missing=())
    with pytest.raises(ValueError):
        replay_plan(["a = 1"], [[]], upto=2, missing=())
    with pytest.raises(ValueError):
        replay_plan(["a = 1"], [[]], upto=-1, missing=())

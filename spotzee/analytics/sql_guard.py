"""What analyst SQL may do, checked on ClickHouse's own parse of the query (``parseQueryToJSON``).

Deny by default at every level, so a ClickHouse upgrade that adds syntax or functions adds
nothing an analyst can reach until it is listed here:

- statements: one ``SELECT`` (``WITH``, ``UNION``/``INTERSECT``/``EXCEPT``, subqueries, joins);
  every other statement (``KILL``, ``SET``, ``SHOW``, ``DESCRIBE``, ``EXPLAIN``, DDL, writes) is refused;
- AST nodes: only the node types and fields listed in ``_NODES``; a ``SETTINGS`` clause, ``FORMAT``,
  ``INTO OUTFILE`` and query parameters are refused;
- tables: the analytics tables made by the migrations, unqualified or qualified with the analytics
  database, and the query's own CTEs; no table functions at all (``file``, ``url``, ``s3``,
  ``remote``, ``numbers`` ...), no ``system``/``information_schema``, no dictionaries;
- functions: the built-in functions of ClickHouse's documented categories that compute on their
  arguments only (``_ALLOWED_CATEGORIES``) plus a short list of named ones; never anything that reads
  files, settings, the environment, the network, other tables or dictionaries, nor user-defined
  functions. Aggregate combinators (``uniqExactIf``, ``sumMerge`` ...) count as their base function.

The catalogue of functions comes from ``system.functions`` of the engine that runs the query, so
names, aliases and case-insensitivity are ClickHouse's, not a copy of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spotzee.analytics.migrations import MIGRATIONS
from spotzee.errors import InvalidInput


class SqlRefused(InvalidInput):
    """The query parsed but does something analyst SQL may not do."""

    code = "sql_refused"

    def __init__(self, reason: str) -> None:
        super().__init__(f"query refused: {reason}", details=[{"path": "query", "reason": reason}])


# Categories of system.functions whose members only compute on their arguments. Left out on
# purpose: Other (mixed: file, getSetting, hostName ... the harmless ones are named below),
# Dictionary and Embedded Dictionary (external sources, server files), Introspection, Internal,
# AI (calls a model over the network), Machine Learning (models loaded from server files),
# Time Series (reads a server-side tag store), and the uncategorised ones (named below).
_ALLOWED_CATEGORIES = frozenset(
    {
        "Aggregate Functions",
        "Arithmetic",
        "Arrays",
        "Bit",
        "Bitmap",
        "Comparison",
        "Conditional",
        "Dates and Times",
        "Distance",
        "Encoding",
        "Encryption",
        "Financial",
        "Geo",
        "Geo Polygon",
        "Hash",
        "IP Address",
        "JSON",
        "Logical",
        "Map",
        "Mathematical",
        "Null",
        "NumericIndexedVector",
        "QBit",
        "Random Number",
        "Rounding",
        "String",
        "String Replacement",
        "String Search",
        "String Splitting",
        "Time Window",
        "Tuple",
        "Type Conversion",
        "URL",  # parses URL strings; fetches nothing
        "UUID",
    }
)

# Pure functions outside those categories (ClickHouse leaves many uncategorised). Aliases
# (``DATABASE`` -> ``currentDatabase``) are judged by what they alias.
_ALLOWED_NAMES = frozenset(
    {
        # syntax the parser turns into calls
        "lambda",
        "caseWithExpression",
        "caseWithExpr",
        "caseWithoutExpr",
        "caseWithoutExpression",
        # Other
        "bar",
        "byteSize",
        "countDigits",
        "currentDatabase",
        "defaultValueOfArgumentType",
        "defaultValueOfTypeName",
        "finalizeAggregation",
        "formatReadableDecimalSize",
        "formatReadableQuantity",
        "formatReadableSize",
        "formatReadableTimeDelta",
        "getSizeOfEnumType",
        "getSubcolumn",
        "identity",
        "ignore",
        "initializeAggregation",
        "isConstant",
        "isDecimalOverflow",
        "MACNumToString",
        "MACStringToNum",
        "MACStringToOUI",
        "materialize",
        "minSampleSizeContinuous",
        "minSampleSizeConversion",
        "neighbor",
        "parseISO8601Duration",
        "parseReadableSize",
        "parseReadableSizeOrNull",
        "parseReadableSizeOrZero",
        "parseTimeDelta",
        "runningAccumulate",
        "runningDifference",
        "runningDifferenceStartingWithFirstValue",
        "throwIf",
        "toColumnTypeName",
        "toTypeName",
        "transform",
        "variantElement",
        "variantType",
        "visibleWidth",
        # uncategorised
        "FORMAT_BYTES",
        "NATURAL_SORT_KEY",
        "arrayAUC",
        "arrayPRAUC",
        "byteSlice",
        "concat_ws",
        "distanceCosine",
        "distanceL1",
        "distanceL2",
        "distanceL2Squared",
        "distanceLinf",
        "distanceLp",
        "extractAllGroups",
        "flatten",
        "hasAllToken",
        "hasAnyToken",
        "isASCII",
        "jsonMergePatch",
        "levenshteinDistance",
        "levenshteinDistanceUTF8",
        "mapContains",
        "mapFromString",
        "matchPhrase",
        "mismatches",
        "mod",
        "modOrNull",
        "normL1",
        "normL2",
        "normL2Squared",
        "normLinf",
        "normLp",
        "normalizeL1",
        "normalizeL2",
        "normalizeLinf",
        "normalizeLp",
        "pmod",
        "pmodOrNull",
        "positive_modulo",
        "positive_modulo_or_null",
        "power",
        "regexpInstr",
        "removeAccentsUTF8",
        "replace",
        "scalarProduct",
        "splitByAlpha",
        "sqid",
        "str_to_map",
        "timeZone",
        "timeZoneOf",
        "timeZoneOffset",
        "toTimeZone",
        "toStartOfFiveMinute",
        "trim",
        "vectorDifference",
        "vectorSum",
        "width_bucket",
        "yearweek",
        "week",
    }
)

# Refused even if a category above would take them: they reveal the server or its neighbours,
# read files or other tables, or only waste the server's time.
_DENIED_NAMES = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "hascolumnintable",
        "getsetting",
        "getsettingordefault",
        "getserversetting",
        "getmergetreesetting",
        "getmacro",
        "hostname",
        "fqdn",
        "fullhostname",
        "serveruuid",
        "servertimezone",
        "sleep",
        "sleepeachrow",
        "catboostevaluate",
        "evalmlmethod",
        "generateserialid",
    }
)

# Right-hand sides of these may name a table (``x IN events``).
_IN_FUNCTIONS = frozenset(
    {"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn"}
)

_DANGEROUS_DATABASES = ("system", "information_schema")


@dataclass(frozen=True)
class FunctionCatalogue:
    """The functions analyst SQL may call, by exact name and (case-insensitive ones) by lower name."""

    exact: frozenset[str]
    lower: frozenset[str]  # case-insensitive functions, lower-cased
    aggregates: frozenset[str]  # allowed aggregate functions (a combinator suffix may follow)
    combinators: tuple[str, ...]  # longest first

    @classmethod
    def from_system(cls, functions: Iterable[Mapping[str, Any]], combinators: Iterable[str]) -> FunctionCatalogue:
        """``functions``: rows of system.functions (name, is_aggregate, case_insensitive, alias_to,
        origin, categories)."""
        rows = [dict(row) for row in functions]
        category = {str(row["name"]): str(row["categories"]) for row in rows}
        exact: set[str] = set()
        lower: set[str] = set()
        aggregates: set[str] = set()
        for row in rows:
            name = str(row["name"])
            target = str(row["alias_to"] or name)  # an alias runs its target: judge the target
            if row["origin"] != "System":  # user-defined functions may run anything
                continue
            if name.lower() in _DENIED_NAMES or target.lower() in _DENIED_NAMES:
                continue
            if target not in _ALLOWED_NAMES and not _categorised(category.get(target, "")):
                continue
            exact.add(name)
            if row["case_insensitive"]:
                lower.add(name.lower())
            if row["is_aggregate"]:
                aggregates.add(name)
                if row["case_insensitive"]:
                    aggregates.add(name.lower())
        exact.update(("lambda", "caseWithExpression", "caseWithoutExpression"))  # parser-made calls
        ordered = tuple(sorted(combinators, key=len, reverse=True))
        return cls(frozenset(exact), frozenset(lower), frozenset(aggregates), ordered)

    def allows(self, name: str) -> bool:
        if name.lower() in _DENIED_NAMES:
            return False
        if name in self.exact or name.lower() in self.lower:
            return True
        return self._aggregate_with_combinators(name)

    def _aggregate_with_combinators(self, name: str) -> bool:
        """``uniqExactIf``, ``sumForEach``, ``countIfOrNull`` ...: strip combinators off the end."""
        if name in self.aggregates or name.lower() in self.aggregates:
            return True
        for suffix in self.combinators:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and base and self._aggregate_with_combinators(base):
                return True
        return False


def _categorised(categories: str) -> bool:
    parts = {part.strip() for part in categories.split(",") if part.strip()}
    return bool(parts) and parts <= _ALLOWED_CATEGORIES


_CREATE = re.compile(r"CREATE\s+(?:TABLE|VIEW)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


def analytics_tables() -> frozenset[str]:
    """The tables and views the migrations create (our own DDL, not user input)."""
    return frozenset(
        m.group(1) for migration in MIGRATIONS for sql in migration.statements for m in _CREATE.finditer(sql)
    )


# Node type -> the fields it may carry (besides "type"). Anything else is refused as unsupported.
_NODES: dict[str, frozenset[str]] = {
    "SelectWithUnionQuery": frozenset(
        {"union_mode", "list_of_modes", "list_of_selects", "is_outfile_append", "is_outfile_truncate"}
        | {"is_into_outfile_with_stdout"}
    ),
    "SelectIntersectExceptQuery": frozenset({"children", "final_operator", "mode"}),
    "SelectQuery": frozenset(
        {"with", "recursive_with", "select", "distinct", "tables", "prewhere", "where", "group_by", "having"}
        | {"group_by_with_totals", "group_by_with_rollup", "group_by_with_cube", "group_by_with_grouping_sets"}
        | {"group_by_all", "window", "qualify", "order_by", "order_by_all", "limit_by_length", "limit_by_offset"}
        | {"limit_by", "limit_offset", "limit_length", "limit_with_ties", "interpolate"}
    ),
    "ExpressionList": frozenset({"children"}),
    "Subquery": frozenset({"children", "alias", "cte_name"}),
    "WithElement": frozenset({"name", "subquery", "aliases"}),
    "TablesInSelectQuery": frozenset({"children"}),
    "TablesInSelectQueryElement": frozenset({"table_expression", "table_join", "array_join"}),
    "TableExpression": frozenset({"database_and_table_name", "subquery", "final", "sample_size", "sample_offset"}),
    "TableIdentifier": frozenset({"name", "name_parts", "alias"}),
    "TableJoin": frozenset({"kind", "strictness", "locality", "on_expression", "using_expression_list"}),
    "ArrayJoin": frozenset({"kind", "expression_list"}),
    "SampleRatio": frozenset({"numerator", "denominator"}),
    "Function": frozenset(
        {"name", "alias", "arguments", "parameters", "is_operator", "is_lambda_function", "is_window_function"}
        | {"kind", "nulls_action", "window_definition", "window_name"}
    ),
    "Identifier": frozenset({"name", "name_parts", "alias"}),
    "Literal": frozenset({"value", "alias"}),
    "Asterisk": frozenset({"transformers"}),
    "QualifiedAsterisk": frozenset({"qualifier", "transformers"}),
    "ColumnsRegexpMatcher": frozenset({"pattern", "transformers"}),
    "ColumnsListMatcher": frozenset({"column_list", "transformers"}),
    "QualifiedColumnsRegexpMatcher": frozenset({"pattern", "qualifier", "transformers"}),
    "QualifiedColumnsListMatcher": frozenset({"column_list", "qualifier", "transformers"}),
    "ColumnsTransformerList": frozenset({"children"}),
    "ColumnsApplyTransformer": frozenset({"func_name", "lambda", "lambda_arg", "parameters", "column_name_prefix"}),
    "ColumnsExceptTransformer": frozenset({"children", "is_strict", "pattern"}),
    "ColumnsReplaceTransformer": frozenset({"children", "is_strict"}),
    "ColumnsReplaceTransformerReplacement": frozenset({"children", "name"}),
    "OrderByElement": frozenset(
        {"expression", "direction", "nulls_direction", "nulls_direction_was_explicitly_specified", "collation"}
        | {"with_fill", "fill_from", "fill_to", "fill_step", "fill_staleness"}
    ),
    "InterpolateElement": frozenset({"column", "expr"}),
    "WindowDefinition": frozenset(
        {"parent_window_name", "partition_by", "order_by", "frame_is_default", "frame_type", "frame_begin_type"}
        | {"frame_begin_offset", "frame_begin_preceding", "frame_end_type", "frame_end_offset", "frame_end_preceding"}
    ),
    "WindowListElement": frozenset({"name", "definition"}),
}

_CLAUSES = {
    "settings": "a SETTINGS clause",
    "format_ast": "a FORMAT clause",
    "out_file": "INTO OUTFILE",
    "compression": "INTO OUTFILE",
    "table_function": "a table function",
}

_STATEMENT_NAMES = {
    "SetQuery": "SET / SETTINGS",
    "KillQueryQuery": "KILL QUERY",
    "ShowTablesQuery": "SHOW",
    "ExplainQuery": "EXPLAIN",
    "QueryParameter": "query parameters",
}


class SqlGuard:
    """Checks one parsed statement (the JSON of ``parseQueryToJSON``) against the rules above."""

    def __init__(self, *, database: str, tables: frozenset[str], functions: FunctionCatalogue) -> None:
        self.database = database
        self.tables = tables
        self.functions = functions
        self._aliases: frozenset[str] = frozenset()

    def check(self, ast: Mapping[str, Any]) -> None:
        if ast.get("type") != "SelectWithUnionQuery":
            raise SqlRefused(f"only SELECT statements may run here, not {_describe(ast.get('type'))}")
        self._aliases = frozenset(_aliases(ast))
        self._node(ast, frozenset())

    # -- walking ----------------------------------------------------------------------------

    def _node(self, node: Any, ctes: frozenset[str]) -> None:
        if not isinstance(node, Mapping):
            raise SqlRefused("unexpected query structure")
        kind = _supported_kind(node)
        if kind == "SelectWithUnionQuery":
            self._children(node.get("list_of_selects"), ctes)
        elif kind == "SelectQuery":
            self._select(node, ctes)
        elif kind == "TableIdentifier":
            self._table(node, ctes)
        elif kind == "Function":
            self._function(node, ctes)
        elif kind == "Identifier":
            self._identifier(node)
        elif kind == "ColumnsApplyTransformer":
            self._columns_apply(node, ctes)
        elif kind == "WithElement":
            self._fields(node, ("subquery",), ctes)
        elif kind == "Literal":
            return  # data, not code
        else:
            self._fields(node, tuple(k for k in _NODES[kind]), ctes)

    def _columns_apply(self, node: Mapping[str, Any], ctes: frozenset[str]) -> None:
        """A column transformer ``APPLY(f)`` (``* APPLY(f)``, ``COLUMNS(...) APPLY(f)``): ``f`` is checked
        like any function called."""
        name = node.get("func_name")
        if isinstance(name, str) and name and not self.functions.allows(name):
            raise SqlRefused(f"function {name}() is not allowed in analyst SQL")
        self._fields(node, ("lambda", "parameters"), ctes)

    def _fields(self, node: Mapping[str, Any], keys: Iterable[str], ctes: frozenset[str]) -> None:
        for key in keys:
            value = node.get(key)
            if isinstance(value, Mapping):
                self._node(value, ctes)
            elif isinstance(value, list):
                self._children(value, ctes)

    def _children(self, value: Any, ctes: frozenset[str]) -> None:
        if isinstance(value, Mapping):
            self._node(value, ctes)
        elif isinstance(value, list):
            for child in value:
                if isinstance(child, Mapping):
                    self._node(child, ctes)
                elif not isinstance(child, str | int | float | bool) and child is not None:
                    raise SqlRefused("unexpected query structure")

    def _select(self, node: Mapping[str, Any], ctes: frozenset[str]) -> None:
        # CTEs are visible in the whole SELECT that defines them, nested subqueries included.
        names = set(ctes)
        with_list = node.get("with")
        if isinstance(with_list, Mapping):
            for element in with_list.get("children", []):
                if isinstance(element, Mapping) and isinstance(element.get("name"), str):
                    names.add(element["name"])
        scope = frozenset(names)
        self._fields(node, tuple(k for k in _NODES["SelectQuery"]), scope)

    def _table(self, node: Mapping[str, Any], ctes: frozenset[str]) -> None:
        parts = _parts(node)
        if parts is None:
            raise SqlRefused("unexpected table name")
        self._table_parts(parts, ctes)

    def _table_parts(self, parts: list[str], ctes: frozenset[str]) -> None:
        shown = ".".join(parts)
        if len(parts) == 1 and (parts[0] in self.tables or parts[0] in ctes):
            return
        if len(parts) == 2 and parts[0] == self.database and parts[1] in self.tables:
            return
        raise SqlRefused(
            f"table {shown} is not readable by analyst SQL; it reads {', '.join(sorted(self.tables))}"
            f" (database {self.database})"
        )

    def _function(self, node: Mapping[str, Any], ctes: frozenset[str]) -> None:
        name = node.get("name")
        if not isinstance(name, str) or not self.functions.allows(name):
            raise SqlRefused(f"function {name}() is not allowed in analyst SQL")
        if name in _IN_FUNCTIONS:
            arguments = node.get("arguments")
            children = arguments.get("children", []) if isinstance(arguments, Mapping) else []
            right = children[1] if len(children) == 2 else None
            if isinstance(right, Mapping) and right.get("type") == "Identifier":
                # ``x IN name`` reads a table unless ``name`` is a CTE or an alias of a constant set.
                parts = _parts(right) or [str(right.get("name"))]
                if not (len(parts) == 1 and parts[0] in self._aliases):
                    self._table_parts(parts, ctes)
        self._fields(node, ("arguments", "parameters", "window_definition"), ctes)

    def _identifier(self, node: Mapping[str, Any]) -> None:
        parts = _parts(node)
        if parts and len(parts) > 1 and parts[0].lower() in _DANGEROUS_DATABASES:
            raise SqlRefused(f"{'.'.join(parts)}: the {parts[0]} database is not readable by analyst SQL")


def _parts(node: Mapping[str, Any]) -> list[str] | None:
    parts = node.get("name_parts")
    if isinstance(parts, list) and parts and all(isinstance(p, str) for p in parts):
        return [str(p) for p in parts]
    name = node.get("name")
    return [name] if isinstance(name, str) else None


def _aliases(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        if node.get("type") is not None and isinstance(node.get("alias"), str):
            yield node["alias"]
        for value in node.values():
            yield from _aliases(value)
    elif isinstance(node, list):
        for value in node:
            yield from _aliases(value)


def _describe(kind: object) -> str:
    if isinstance(kind, str):
        return _STATEMENT_NAMES.get(kind, kind.removesuffix("Query") or kind)
    return "this statement"


def _supported_kind(node: Mapping[str, Any]) -> str:
    """The node's type, when analyst SQL allows it with every clause it has."""
    kind = node.get("type")
    if not isinstance(kind, str) or kind not in _NODES:
        raise SqlRefused(f"{_describe(kind)} is not supported in analyst SQL")
    if kind == "TableExpression" and isinstance(node.get("table_function"), Mapping):
        name = node["table_function"].get("name")
        raise SqlRefused(f"table function {name}() is not allowed in analyst SQL: read the analytics tables")
    unknown = sorted(set(node) - _NODES[kind] - {"type"})
    if unknown:
        clauses = ", ".join(_CLAUSES.get(field, field) for field in unknown)
        raise SqlRefused(f"{clauses} is not supported in analyst SQL")
    return kind

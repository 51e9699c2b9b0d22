"""SQL as text: its tokens, the canonical form two equal queries share, a top-level ORDER BY.

The demo's leak-free split keeps a query out of train when its canonical form is in eval, and
the scorer (:mod:`tunesmith.eval.sql`) uses the same forms for exact match and to know when a
result's row order counts. Lexing only: nothing here runs SQL.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?     # string literal (kept verbatim, case-sensitive)
      | "(?:[^"]|"")*"?     # quoted identifier
      | `[^`]*`?
      | \[[^\]]*\]?
      | \d+(?:\.\d*)?(?:[eE][-+]?\d+)? | \.\d+(?:[eE][-+]?\d+)?
      | [A-Za-z_][\w$]*
      | <=|>=|<>|!=|==|\|\||<<|>>
      | \S""",
    re.VERBOSE,
)


def sql_tokens(sql: str) -> list[str]:
    """Split SQL into tokens; string literals and quoted identifiers stay whole."""
    return _TOKEN.findall(sql)


def split_statement(text: str) -> tuple[str, str]:
    """(first statement without its ';', the rest), ignoring ';' inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            return text[:i], text[i + 1 :]
    return text, ""


def normalize_sql(sql: str) -> str:
    """Canonical text for exact match: tokens joined by one space, lower case outside
    string literals, trailing semicolons dropped.

    SQLite keywords and identifiers are case-insensitive and whitespace is insignificant,
    so two queries with equal normal forms are the same query; string literals keep their
    case because ``'Boston' != 'boston'`` in SQLite.
    """
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return " ".join(t if t.startswith("'") else t.lower() for t in sql_tokens(text))


def has_top_level_order_by(sql: str) -> bool:
    """True when the outermost query sorts its result (ORDER BY outside any parentheses)."""
    depth, prev = 0, ""
    for tok in sql_tokens(sql):
        low = tok.lower()
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and prev == "order" and low == "by":
            return True
        prev = low if depth == 0 else ""
    return False

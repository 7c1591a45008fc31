"""Azure Functions route templates (`api/{version}/clusters/{op}`) as regular expressions.

The Functions host uses ASP.NET route templates; this covers the parts our routes and common
apps use: `{name}`, `{name?}`, `{*name}` and `{name:constraint}` (int, alpha, maxlength(n),
regex(...)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([^}?]+(?:\([^)]*\))?))?(\?)?\}")
_CONSTRAINTS = {"int": r"-?\d+", "alpha": r"[A-Za-z]+", "guid": r"[0-9a-fA-F-]{36}"}


@dataclass(frozen=True)
class RouteTemplate:
    template: str
    regex: re.Pattern[str]

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(path.strip("/"))
        if m is None:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}


def compile_route(template: str) -> RouteTemplate:
    out = []
    pos = 0
    t = template.strip("/")
    for m in _PARAM.finditer(t):
        literal = t[pos : m.start()]
        slash = bool(m.group(4)) and literal.endswith("/")
        out.append(re.escape(literal[:-1] if slash else literal))
        star, name, constraint, optional = m.groups()
        if star:
            part = r".*"
        elif constraint and constraint.startswith("regex("):
            part = constraint[len("regex(") : -1].lstrip("^").rstrip("$")
        elif constraint and (n := re.fullmatch(r"maxlength\((\d+)\)", constraint)):
            part = rf"[^/]{{0,{n.group(1)}}}"
        else:
            part = _CONSTRAINTS.get(constraint or "", r"[^/]+")
        group = f"(?P<{name}>{part})"
        if optional:
            group = f"(?:/{group})?" if slash else group + "?"
        out.append(group)
        pos = m.end()
    out.append(re.escape(t[pos:]))
    return RouteTemplate(template, re.compile("".join(out)))

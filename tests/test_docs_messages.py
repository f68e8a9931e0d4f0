"""docs/troubleshooting.md against the code: every message it documents is one the programs can
print, and every error or warning the programs print is documented there.

An operator looks a message up in that document when it appears in a terminal, a log or a
watcher report at 3 a.m. A documented message that the code no longer prints, or a new message
nobody documented, sends them searching in vain. Docs that drift fail here, not in an operator's
terminal.

Pure: reads the document and the source files, runs nothing.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "troubleshooting.md"
SOURCES = sorted([*ROOT.glob("snf_watcher/*.py"), *ROOT.glob("ganeti_hooks/*.py")])
HEADER = ["message", "what it means", "what to do"]

MIN_PART = 4  # a documented message's literal parts this long must be in the source
MIN_FRAGMENT = 12  # a printed message's longest literal part this long must be in the document

PLACEHOLDER = re.compile(r"<[^<>\n]+>")
PERCENT = re.compile(r"%[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[sdifgrxXeEc]")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")

LOG_METHODS = frozenset({"error", "warning", "critical", "exception"})
LOGGERS = frozenset({"log", "logger", "logging"})
# Exceptions whose text reaches an operator (stderr, the log, the report, a dead letter).
MESSAGE_EXCEPTIONS = frozenset(
    {
        "ConfigError",
        "PoolError",
        "OutboxError",
        "JobParseError",
        "HookInputError",
        "BadMessage",
        "BadSnapshot",
        "DatabaseDown",
        "DeliveryBusy",
        "Outdated",
        "OSError",
    }
)
VALUE_ERROR_FILES = frozenset({"pause.py", "state.py", "spool.py", "messages.py"})
# Functions whose returned strings (the last item of a returned tuple) are messages.
TEXT_FUNCTIONS = frozenset(
    {
        "_network_problem",
        "_http_problem",
        "directory_problem",
        "mode_problem",
        "write_access",
        "_unconnectable",
        "_action",
    }
)
SEVERE = frozenset({"WARNING", "CRITICAL"})
STRIPS = frozenset({"strip", "rstrip", "lstrip"})


@dataclass(frozen=True)
class Printed:
    """One message the source can print: where, its expression, and its literal parts."""

    path: str
    line: int
    source: str
    fragments: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.path, self.source)

    @property
    def longest(self) -> str:
        return max((normal(f) for f in self.fragments), key=len, default="")


# ---------------------------------------------------------------- the document


def normal(text: str) -> str:
    return " ".join(text.split())


def doc_text() -> str:
    return DOC.read_text()


def table_rows(text: str) -> Iterator[list[str]]:
    """The cells of every Markdown table row, header and separator rows left out."""
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells == HEADER or all(set(c) <= set("-: ") for c in cells):
            continue
        yield cells


def code_spans(cell: str) -> list[str]:
    """Markdown code spans, delimited by runs of backticks; one space of padding is dropped."""
    out = []
    for _, body in CODE_SPAN.findall(cell):
        if len(body) > 1 and body.startswith(" ") and body.endswith(" "):
            body = body[1:-1]
        out.append(body)
    return out


def documented_messages(text: str) -> list[str]:
    return [span for cells in table_rows(text) for span in code_spans(cells[0])]


def literal_parts(message: str) -> list[str]:
    return [p for p in PLACEHOLDER.split(message) if len(p.strip()) >= MIN_PART]


# ---------------------------------------------------------------- the source


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def string_constants(tree: ast.AST) -> Iterator[str]:
    """Every string literal, implicit concatenations joined (as the raw text does not show them)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def source_corpus() -> str:
    texts = []
    for path in SOURCES:
        raw = path.read_text()
        texts += [raw, *string_constants(ast.parse(raw))]
    return "\n".join(texts)


def fragments(expr: ast.expr) -> list[str]:
    """The constant parts of a message expression; variable parts split them."""
    if isinstance(expr, ast.Constant):
        return PERCENT.split(expr.value) if isinstance(expr.value, str) else []
    if isinstance(expr, ast.JoinedStr):
        return [v.value for v in expr.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return fragments(expr.left) + fragments(expr.right)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod):
        return fragments(expr.left)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in STRIPS:
        return fragments(expr.func.value)  # f"...".strip()
    return []


def is_name(node: ast.AST | None, names: frozenset[str]) -> bool:
    return isinstance(node, ast.Name) and node.id in names


class Collector(ast.NodeVisitor):
    """The message expressions of one file: log calls, stderr prints, problems, raised texts,
    report headlines, check-config lines, verdicts and findings of WARNING or worse."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.scopes: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.found: list[Printed] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(node)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        func, args = node.func, node.args
        if isinstance(func, ast.Attribute):
            if func.attr in LOG_METHODS and is_name(func.value, LOGGERS) and args:
                self.add(args[0])
            if func.attr == "append" and args and _is_problems(func.value):
                self.add(args[0])
        if isinstance(func, ast.Name) and func.id == "print" and args and _to_stderr(node):
            self.add(args[0])
        severe = [i for i, a in enumerate(args) if is_name(a, SEVERE)]
        if severe and severe[0] < len(args) - 1:  # Check(CRITICAL, area, text), verdict(rule, WARNING, text)
            self.add(args[-1])
        keywords = {k.arg: k.value for k in node.keywords}
        if is_name(keywords.get("severity"), SEVERE) and "text" in keywords:
            self.add(keywords["text"])
        if keywords.get("blocked") is not None:
            self.add(keywords["blocked"])
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc
        if isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name) and exc.args:
            name = exc.func.id
            if name in ("RapiError", "OSError") and len(exc.args) > 1:  # (kind, text), (errno, text, path)
                self.add(exc.args[1])
            elif name in MESSAGE_EXCEPTIONS or (
                name == "ValueError" and Path(self.path).name in VALUE_ERROR_FILES
            ):
                self.add(exc.args[0])
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if self.scopes and self.scopes[-1].name in TEXT_FUNCTIONS and node.value is not None:
            value = node.value
            self.add(value.elts[-1] if isinstance(value, ast.Tuple) else value)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._assigned(target, node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._assigned(node.target, node.value)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        pair = len(node.elts) == 2 and isinstance(node.ctx, ast.Load)
        if pair and is_name(node.elts[0], SEVERE):  # (WARNING, text): a fix's outcome
            self.add(node.elts[1])
        self.generic_visit(node)

    def _assigned(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Attribute) and target.attr == "headline":
            self.add(value)
        if isinstance(target, ast.Name) and target.id == "blocked":
            self.add(value)

    def add(self, expr: ast.expr) -> None:
        if isinstance(expr, ast.IfExp):
            self.add(expr.body)
            self.add(expr.orelse)
            return
        if isinstance(expr, ast.Constant) and not isinstance(expr.value, str):
            return  # None: no message
        if isinstance(expr, ast.Call) and ast.unparse(expr.func) in TEXT_FUNCTIONS:
            return  # collected where that function returns it
        if isinstance(expr, ast.Name) and self.scopes:
            values = self._values_of(expr.id)
            if values:
                for value in values:
                    self.add(value)
                return
        self.found.append(Printed(self.path, expr.lineno, ast.unparse(expr), tuple(fragments(expr))))

    def _values_of(self, name: str) -> list[ast.expr]:
        """What a local variable holding a message text was set to, in the enclosing function."""
        return [
            node.value
            for node in ast.walk(self.scopes[-1])
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ]


def _is_problems(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "problems") or (
        isinstance(node, ast.Attribute) and node.attr == "problems"
    )


def _to_stderr(call: ast.Call) -> bool:
    return any(k.arg == "file" and ast.unparse(k.value) == "sys.stderr" for k in call.keywords)


def printed_messages() -> list[Printed]:
    """Every message expression of the source, once each (a variable set in several places
    is collected at each place it is set)."""
    out: dict[tuple[str, int, str], Printed] = {}
    for path in SOURCES:
        collector = Collector(relative(path))
        collector.visit(ast.parse(path.read_text()))
        out.update({(p.path, p.line, p.source): p for p in collector.found})
    return list(out.values())


# ---------------------------------------------------------------- what may stay undocumented

# Messages whose literal parts are all shorter than MIN_FRAGMENT characters: there is nothing
# distinctive to look for in the document. Each is fine because what it prints is documented
# where it is made: it passes another message through ("%s", str(e), a problem list), or only
# puts a prefix (a program, file, key, URL, instance or job) before one. Their full forms are
# in the document too, where it helps; test 1 checks those.
SKIPPED: frozenset[tuple[str, str]] = frozenset(
    {
        # A message made elsewhere, passed through unchanged.
        ("ganeti_hooks/eventd.py", "'%s'"),  # OutboxError or OSError at start
        ("snf_watcher/delivery.py", "'%s'"),  # OutboxError in the delivery thread
        ("snf_watcher/watcher.py", "p"),  # a state or pause file problem, in the report
        ("snf_watcher/watcher.py", "'problem: %s'"),  # each of the report's problems, logged too
        ("snf_watcher/watcher.py", "str(e)"),  # DatabaseDown from delivery.flush
        ("snf_watcher/checkconfig.py", "str(e)"),  # a RapiError
        ("snf_watcher/reconcile.py", "str(e)"),  # a PoolError, as a finding's `blocked`
        ("snf_watcher/syncdb.py", "_one_line(e)"),  # PostgreSQL's or libpq's own text
        # A prefix before a documented message or reason.
        ("ganeti_hooks/eventd.py", "'job-%d skipped: %s'"),  # jobqueue's and eventd's reasons
        ("ganeti_hooks/jobqueue.py", "f'not JSON: {e}'"),  # the JSON parser's words
        ("ganeti_hooks/progress.py", "'%s: skipped: %s'"),  # the progress monitor's reasons
        ("snf_watcher/delivery.py", "'dead letter %d (%s): %s'"),  # the dead-letter reasons
        ("snf_watcher/checkconfig.py", "f'{key}: {problem}'"),  # directory_problem, mode_problem
        ("snf_watcher/checkconfig.py", "f'{existing}: {e.strerror}'"),  # the OS's words
        ("snf_watcher/checkconfig.py", "f'{key} {path}: {e.strerror}'"),  # the OS's words
        ("snf_watcher/checkconfig.py", "f'{where}: {e}'"),  # a DatabaseDown
        ("snf_watcher/checkconfig.py", "f'user {r.user} {access} in {users}'"),  # write_access's
        ("snf_watcher/rapi.py", "f'RAPI {url}: {text}'"),  # _network_problem's and others
        ("snf_watcher/rapi.py", "f'RAPI {url}: {resp.status_code} {resp.reason}{text}'"),  # _http_problem's
        ("snf_watcher/rapi.py", "f'RAPI {self._base}{path}: {text}'"),  # the bad-json text
        ("snf_watcher/rapi.py", "f': {detail}'"),  # Ganeti's own words
        ("snf_watcher/rapi.py", "f': user {self.cfg.user} lacks {access} access in {USERS_FILE}'"),
        ("snf_watcher/watcher.py", "'%s: %s'"),  # a giving-up verdict's text
        ("snf_watcher/watcher.py", "f'not fixed: {why}'"),  # a skip reason, Outdated, fix_pool's
        ("snf_watcher/watcher.py", "f'fix failed: {why}'"),  # a dead-letter reason
        ("snf_watcher/watcher.py", "f'fix failed: {e}{submitted}'"),  # a RapiError
        # Short messages whose variable parts carry the meaning; documented in full.
        ("snf_watcher/config.py", "f'{path}: {key}: expected {hint.__name__}, got {_kind(value)} {value!r}'"),
        ("snf_watcher/events.py", "f'field {name!r} is {value!r}, expected {_kind_name(kind)}'"),
        ("snf_watcher/snapshot.py", "f'RAPI {what} {ident}: {key} is {value!r}, expected {kind.__name__}'"),
        ("snf_watcher/state.py", "'a string'"),  # what a damaged field should have been
        ("snf_watcher/state.py", "f'{where}.{key}: expected {e}, got {got}; set to {json.dumps(default)}'"),
        ("snf_watcher/reconcile.py", "f'{f.fix} (fix {rec.attempts + 1} of {opts.max_tries})'"),
        (
            "snf_watcher/watcher.py",
            "f\"paused {until} ({paused.source}): {paused.reason or 'no reason given'}\"",
        ),
    }
)


# ---------------------------------------------------------------- the tests


def test_every_documented_message_is_in_the_source() -> None:
    corpus = source_corpus()
    missing = [
        f"{message!r}: {[p for p in literal_parts(message) if p not in corpus]}"
        for message in documented_messages(doc_text())
        if any(p not in corpus for p in literal_parts(message))
    ]
    assert missing == [], "documented, but no program prints it:\n" + "\n".join(missing)


def test_every_printed_message_is_documented() -> None:
    doc = normal(doc_text())
    undocumented = [
        f"{p.path}:{p.line}: {p.source}  (looked for {p.longest!r})"
        for p in printed_messages()
        if len(p.longest) >= MIN_FRAGMENT and p.longest not in doc
    ]
    assert undocumented == [], "printed, but not in docs/troubleshooting.md:\n" + "\n".join(undocumented)


def test_the_short_messages_left_undocumented_are_the_listed_ones() -> None:
    short = {p.key for p in printed_messages() if len(p.longest) < MIN_FRAGMENT}
    assert sorted(short - SKIPPED) == [], "new short messages: document them and list them in SKIPPED"
    assert sorted(SKIPPED - short) == [], "listed in SKIPPED, but no longer in the source"


def test_every_table_is_a_message_table() -> None:
    lines = doc_text().splitlines()
    headers = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line, below in zip(lines, lines[1:], strict=False)
        if line.startswith("|") and below.startswith("|---")
    ]
    assert headers and all(h == HEADER for h in headers)
    assert all(len(cells) == len(HEADER) for cells in table_rows(doc_text()))


def test_neither_side_is_trivially_small() -> None:
    documented = documented_messages(doc_text())
    printed = printed_messages()
    assert sum(bool(literal_parts(m)) for m in documented) >= 40
    assert len(printed) >= 40
    assert sum(len(p.longest) >= MIN_FRAGMENT for p in printed) >= 40

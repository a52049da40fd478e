"""tree-sitter in a child process: syntax-check files, or find which grammar parses them cleanly.

    python -I run_treesitter.py check GRAMMAR FILE...      -> {"file", "findings": [[line, rule, message]]}
    python -I run_treesitter.py detect GRAMMAR,... FILE... -> {"file", "grammar": name or null}

One JSON line per file, in order. It runs apart from the gate because grammars are C code fed
hostile input: a crash or a runaway parse costs this process, not the Airflow worker or the service.
"""

import json
import sys

from tree_sitter import Node
from tree_sitter_language_pack import get_parser

MAX_FINDINGS = 20
EMPTY = [0, "empty_code", "no code: the sample holds only comments"]


def syntax_findings(root: Node, source: bytes) -> list[list[object]]:
    findings: list[list[object]] = []
    stack = [root]
    while stack and len(findings) < MAX_FINDINGS:
        node = stack.pop()
        line = node.start_point.row + 1
        if node.is_missing:
            findings.append([line, "missing", f"missing {node.type!r}"])
        elif node.is_error:
            text = source[node.start_byte : node.end_byte][:40].decode("utf-8", "replace")
            findings.append([line, "syntax-error", f"syntax error at {text!r}"])
        elif node.has_error:
            stack.extend(reversed(node.children))
    return findings


def main(argv: list[str]) -> None:
    mode, grammars, paths = argv[0], argv[1].split(","), argv[2:]
    parsers = {name: get_parser(name) for name in grammars}  # type: ignore[arg-type]
    for path in paths:
        with open(path, "rb") as fh:
            source = fh.read()
        record: dict[str, object]
        if mode == "check":
            tree = parsers[grammars[0]].parse(source)
            findings = syntax_findings(tree.root_node, source)
            if not findings and all("comment" in child.type for child in tree.root_node.named_children):
                findings = [EMPTY]
            record = {"file": path, "findings": findings}
        else:
            clean = (g for g in grammars if not parsers[g].parse(source).root_node.has_error)
            record = {"file": path, "grammar": next(clean, None)}
        print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])

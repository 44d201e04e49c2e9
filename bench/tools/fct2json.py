#!/usr/bin/env python3
"""Converts a CLIPS fact file (.fct, as read by `load-facts`) to the Stoa facts
JSON format: [{"type": "Guest", "fields": {"name": "n1", ...}}, ...].

  fct2json.py IN.fct [OUT.json]        (stdout without OUT)
  fct2json.py --all                    (every bench-data file into bench/*/data/)

Template facts `(guest (name n1) (sex f))` become `{"type": "Guest", "fields":
{"name": "n1", "sex": "f"}}`. The relation name is turned into a Stoa type name
(upper camel case: `last_seat` -> `LastSeat`); slot names are kept. Integers
become JSON integers, floats JSON floats, symbols and strings JSON strings; a
slot with several values (a multislot) becomes an array, an empty one `[]`.
Ordered facts `(point 1 2)` have no slot names: their values go into a field
`values` (an array). Facts keep the order of the file.

Standard library only.
"""

import json
import os
import re
import sys

TOKEN = re.compile(r'\s*(?:(;[^\n]*)|(\()|(\))|("(?:[^"\\]|\\.)*")|([^\s()";]+))')


def tokenize(text):
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                return
            raise ValueError(f"cannot read at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        comment, lp, rp, string, atom = m.groups()
        if comment is not None:
            continue
        if lp:
            yield "("
        elif rp:
            yield ")"
        elif string is not None:
            yield ("str", json.loads(string))
        elif atom is not None:
            yield ("atom", atom)


def parse(tokens):
    """Nested lists of atoms."""
    stack = [[]]
    for t in tokens:
        if t == "(":
            stack.append([])
        elif t == ")":
            if len(stack) == 1:
                raise ValueError("unbalanced `)`")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(t)
    if len(stack) != 1:
        raise ValueError("unbalanced `(`")
    return stack[0]


def value(tok):
    kind, text = tok
    if kind == "str":
        return text
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return text


def type_name(relation):
    parts = [p for p in re.split(r"[_\-]", relation) if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) or relation


def convert(text):
    out = []
    for fact in parse(tokenize(text)):
        if not isinstance(fact, list) or not fact or isinstance(fact[0], list):
            raise ValueError(f"not a fact: {fact!r}")
        rel = fact[0][1]
        rest = fact[1:]
        if rest and all(isinstance(s, list) for s in rest):
            fields = {}
            for slot in rest:
                if not slot or isinstance(slot[0], list):
                    raise ValueError(f"bad slot in ({rel} ...): {slot!r}")
                vals = [value(v) for v in slot[1:]]
                fields[slot[0][1]] = vals[0] if len(vals) == 1 else vals
        elif any(isinstance(s, list) for s in rest):
            raise ValueError(f"fact ({rel} ...) mixes slots and values")
        else:
            fields = {"values": [value(v) for v in rest]} if rest else {}
        out.append({"type": type_name(rel), "fields": fields})
    return out


def dump(facts):
    # One fact per line: small diffs, easy to grep.
    return "[\n" + ",\n".join(json.dumps(f, separators=(", ", ": ")) for f in facts) + "\n]\n"


def main(argv):
    if argv[1:] == ["--all"]:
        here = os.path.dirname(os.path.abspath(__file__))
        bench = os.path.dirname(here)
        src = os.environ.get("BENCH_DATA", "/work/shared/bench-data")
        for prog in ("manners", "waltz"):
            d = os.path.join(src, prog)
            for name in sorted(os.listdir(d)):
                if name.endswith(".fct"):
                    with open(os.path.join(d, name)) as f:
                        facts = convert(f.read())
                    dst = os.path.join(bench, prog, "data", name[:-4] + ".json")
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    with open(dst, "w") as f:
                        f.write(dump(facts))
                    print(f"{dst}: {len(facts)} facts")
        return 0
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        facts = convert(f.read())
    if len(argv) == 3:
        with open(argv[2], "w") as f:
            f.write(dump(facts))
    else:
        sys.stdout.write(dump(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

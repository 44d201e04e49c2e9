#!/usr/bin/env python3
"""Summarizes a run of a benchmark, from Stoa or from CLIPS, in one format so
the two can be diffed.

  summarize.py stoa  manners|waltz  TIMELINE.jsonl   (stoa run ... --json)
  summarize.py clips manners|waltz  OUTPUT.txt       (bench/clips/run.sh ... --dump --trace)

Prints `firings N`, `fired RULE N` per rule (sorted), then the result:
  manners: `seat S NAME SEX HOBBIES...` for each seat of the final seating, then
           `valid yes` if neighbours (seat i, i+1, and last-first is not required)
           alternate sex and share a hobby, else `valid no: ...`. The guest data
           is read from the facts file given by --facts (Stoa JSON) for both.
  waltz:   `edge P1 P2 LABEL` for every edge, sorted; then `junction BP TYPE`
           for every junction, sorted (junction barbs p1/p3 depend on the
           order the edges were matched, so only base point and type are listed).

Standard library only.
"""

import collections
import json
import re
import sys


def stoa(path):
    facts = {}
    fired = collections.Counter()
    logs = []
    firings = None
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        ev = json.loads(line)["event"]
        k = ev["kind"]
        if k == "inserted":
            facts[ev["id"]] = (ev["type"], dict(ev["fields"]))
        elif k == "modified":
            ty, f = facts[ev["id"]]
            for key, v in ev["after"].items():
                if v is None:
                    f.pop(key, None)
                else:
                    f[key] = v
        elif k == "retracted":
            facts.pop(ev["id"], None)
        elif k == "fired":
            fired[ev["rule"]] += 1
        elif k == "log":
            logs.append(ev["message"])
        elif k == "turn_committed":
            firings = (firings or 0) + ev["firings"]
        elif k == "turn_failed":
            print(f"turn failed: {ev.get('error')}")
            firings = (firings or 0) + ev.get("firings", 0)
    return firings, fired, list(facts.values()), logs


def clips(path):
    fired = collections.Counter()
    edges, junctions, logs = [], [], []
    firings = None
    for line in open(path):
        m = re.match(r"FIRE\s+\d+\s+(\S+):", line)
        if m:
            fired[m.group(1)] += 1
            continue
        m = re.match(r"(\d+) rules fired", line.strip())
        if m:
            firings = int(m.group(1))
            continue
        w = line.split()
        if w[:1] == ["edge"] and len(w) == 4:
            edges.append(("Edge", {"p1": int(w[1]), "p2": int(w[2]), "label": w[3]}))
        elif w[:1] == ["junction"] and len(w) >= 3:
            junctions.append(("Junction", {"base_point": int(w[1]), "type": w[2]}))
        elif len(w) == 2 and w[1].isdigit() and w[0] not in ("seat", "edge"):
            logs.append(line.strip())
    return firings, fired, edges + junctions, logs


def manners_result(logs, guests_file):
    guests = collections.defaultdict(lambda: {"sex": None, "hobbies": set()})
    if guests_file:
        for f in json.load(open(guests_file)):
            if f["type"] == "Guest":
                g = guests[str(f["fields"]["name"])]
                g["sex"] = f["fields"]["sex"]
                g["hobbies"].add(f["fields"]["hobby"])
    seats = {}
    for line in logs:
        name, seat = line.split()
        seats[int(seat)] = name
    out = []
    for s in sorted(seats):
        g = guests[seats[s]]
        out.append(f"seat {s} {seats[s]} {g['sex']} {' '.join(sorted(g['hobbies']))}")
    problems = []
    order = [seats[s] for s in sorted(seats)]
    if sorted(seats) != list(range(1, len(seats) + 1)):
        problems.append("seats are not 1..N")
    if len(set(order)) != len(order):
        problems.append("a guest is seated twice")
    if guests_file:
        if len(order) != len(guests):
            problems.append(f"{len(order)} seated of {len(guests)} guests")
        for a, b in zip(order, order[1:]):
            if guests[a]["sex"] == guests[b]["sex"]:
                problems.append(f"{a} and {b} have the same sex")
            if not guests[a]["hobbies"] & guests[b]["hobbies"]:
                problems.append(f"{a} and {b} share no hobby")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    out.append("valid yes" if not problems else "valid no: " + "; ".join(problems[:5]) + more)
    return out


def main(argv):
    args = argv[1:]
    guests_file = None
    if "--facts" in args:
        i = args.index("--facts")
        guests_file = args[i + 1]
        del args[i:i + 2]
    if len(args) != 3 or args[0] not in ("stoa", "clips") or args[1] not in ("manners", "waltz"):
        print(__doc__, file=sys.stderr)
        return 2
    engine, prog, path = args
    firings, fired, facts, logs = (stoa if engine == "stoa" else clips)(path)
    print(f"firings {firings}")
    for r in sorted(fired):
        print(f"fired {r} {fired[r]}")
    if prog == "manners":
        for line in manners_result(logs, guests_file):
            print(line)
    else:
        edges = sorted((f["p1"], f["p2"], f.get("label", "nil")) for t, f in facts if t == "Edge")
        for e in edges:
            print("edge %d %d %s" % e)
        js = sorted((f["base_point"], f["type"]) for t, f in facts if t == "Junction")
        for j in js:
            print("junction %d %s" % j)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

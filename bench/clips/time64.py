#!/usr/bin/env python3
"""Times one case in CLIPS 6.4 (clipspy) for `stoa bench engine`, like
time.sh does for CLIPS 6.30; prints "STOA-BENCH <seconds> <rules fired>".

  python time64.py manners FILE.fct | waltz FILE.fct | touch N | insert N
"""
import os
import sys
import time

import clips

here = os.path.dirname(os.path.abspath(__file__))
kind, arg = sys.argv[1], sys.argv[2]
env = clips.Environment()
env.eval("(set-strategy depth)")
if kind in ("manners", "waltz"):
    env.load(os.path.join(here, kind + ".clp"))
    env.reset()
    t = time.perf_counter()
    env.load_facts(arg)
else:
    env.load(os.path.join(here, kind + ".clp"))
    env.reset()
    t = time.perf_counter()
    env.eval(f"(bench-make {arg})")
n = env.run()
print(f"STOA-BENCH {time.perf_counter() - t} {n}")

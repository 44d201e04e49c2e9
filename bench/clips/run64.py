#!/usr/bin/env python3
"""Runs a benchmark in CLIPS 6.4 through clipspy (`pip install clipspy` in a
venv), like bench/clips/run.sh does with CLIPS 6.30: depth strategy, (reset),
(load-facts FILE), (run). Prints "N rules fired" and the run time.

  python run64.py manners|waltz FILE.fct
"""
import os
import sys
import time

import clips

prog, facts = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
env = clips.Environment()
env.eval("(set-strategy depth)")
env.load(os.path.join(here, prog + ".clp"))
env.reset()
env.load_facts(facts)
t = time.perf_counter()
n = env.run()
dt = time.perf_counter() - t
print(f"{n} rules fired")
print(f"run {dt:.3f} s")

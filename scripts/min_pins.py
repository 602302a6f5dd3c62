"""Write the lowest allowed version of every dependency as pip constraints (``name==version`` lines).

Used by scripts/check_min_versions.sh and scripts/bisect_min_version.sh.
Usage: python3 scripts/min_pins.py OUT [SKIP ...]   (run from the repository root)
- the lower bound (``>=``) of each requirement in pyproject.toml's dependencies and the extras below;
- torch is left out (constraints-cpu.txt pins its CPU wheel), and so is each SKIP package;
- ``MINVER_PINS="name==version ..."`` overrides single pins.
"""
import os
import re
import sys
import tomllib

EXTRAS = ("dense", "graph", "llm", "langchain", "lora", "dev")


def _key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", v))


data = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(data["dependencies"])
for extra in EXTRAS:
    reqs += data["optional-dependencies"][extra]
skip = {"torch"} | {s.lower() for s in sys.argv[2:]}
pins = {}
for r in reqs:
    m = re.match(r"^([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][^,;\s]*)", r)
    if m:
        name = re.sub(r"\[.*\]", "", m.group(1)).lower()
        if name not in skip and (name not in pins or _key(m.group(2)) > _key(pins[name])):
            pins[name] = m.group(2)     # a package bounded in two places: the higher bound wins
for extra in os.environ.get("MINVER_PINS", "").split():
    n, v = extra.split("==")
    pins[n.lower()] = v
open(sys.argv[1], "w").write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))

"""Copies the objects of built-in kinds from a rendered manifest, for kubernetes-validate (which
only knows those); custom resources (groups served by CRDs) are left to validate-models.mjs.
Usage: python builtin-objects.py RENDERED.yaml OUT.yaml   (prints the kinds it left out)"""

import sys

import yaml

CRD_GROUPS = ("monitoring.coreos.com/", "argoproj.io/")

objects = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
builtin = [o for o in objects if not o["apiVersion"].startswith(CRD_GROUPS)]
left_out = sorted({o["kind"] for o in objects} - {o["kind"] for o in builtin})
with open(sys.argv[2], "w") as out:
    yaml.safe_dump_all(builtin, out, sort_keys=False)
print(f"{len(builtin)} built-in objects; custom resources left to the models: {', '.join(left_out) or 'none'}")

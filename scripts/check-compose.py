#!/usr/bin/env python3
"""Static check of docker-compose.yml: the Compose JSON schema plus the project's own rules
(every service has a healthcheck or disables it, depends_on uses conditions, every build
names a SERVICE that exists under services/). No Docker engine is needed."""
import json
import os
import sys

import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(root, "docker-compose.yml")) as f:
    compose = yaml.safe_load(f)

errors = []
schema_path = os.path.join(root, "..", "shared", "schemas", "compose-spec.json")
if os.path.exists(schema_path):
    import jsonschema

    with open(schema_path) as f:
        schema = json.load(f)
    for e in jsonschema.Draft7Validator(schema).iter_errors(compose):
        errors.append(f"schema: {'/'.join(map(str, e.path))}: {e.message}")
else:
    print("compose schema not found beside the checkout; checking project rules only")

for name, svc in compose["services"].items():
    if "healthcheck" not in svc:
        errors.append(f"{name}: no healthcheck")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep not in compose["services"]:
            errors.append(f"{name}: depends on unknown {dep}")
        if not isinstance(cond, dict) or "condition" not in cond:
            errors.append(f"{name}: depends_on {dep} without a condition")
    build = svc.get("build")
    if build:
        target = build["args"]["SERVICE"]
        if not os.path.isdir(os.path.join(root, "services", target)):
            errors.append(f"{name}: builds unknown service {target}")

for e in errors:
    print(e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"docker-compose.yml: {len(compose['services'])} services OK")

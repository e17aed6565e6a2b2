#!/usr/bin/env python3
"""Converts a CustomResourceDefinition's openAPIV3Schema into a strict JSON Schema.

    python3 tests/deploy/crd_to_schema.py CRD.yaml tests/deploy/schemas/

writes one `<group>_<kind>_<version>.json` per served version of the CRD. The conversion is
what the API server's structural-schema pruning and strict field validation do, expressed in
JSON Schema so that `check.py` can refuse what the API server would:

- an object with `properties` and neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields: true` refuses unknown fields (`additionalProperties:
  false`); this is what `kubectl apply --validate=strict` reports as "unknown field";
- `nullable: true` adds `null` to the type; `x-kubernetes-int-or-string` allows both;
- `x-kubernetes-embedded-resource` objects also get `apiVersion`, `kind` and `metadata`;
- `description`s are dropped (they are most of a CRD's size and no part of validation), as are
  the other `x-kubernetes-*` markers and CEL rules (`x-kubernetes-validations`, which need a CEL
  evaluator: those few cross-field rules are not checked here).

Only PyYAML is needed.
"""

import json
import pathlib
import sys

import yaml

DROP = {"description", "example", "externalDocs"}


def convert(node):
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in DROP or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {name: convert(child) for name, child in value.items()}
        elif key == "default":
            out[key] = value  # a value, not a schema
        elif key == "enum":
            out[key] = value
        else:
            out[key] = convert(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if "anyOf" not in out:
            out["type"] = ["integer", "string"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if node.get("nullable"):
        out.pop("nullable", None)
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
    else:
        out.pop("nullable", None)
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def main():
    crd_path, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    crd = yaml.safe_load(crd_path.read_text())
    if crd.get("kind") != "CustomResourceDefinition":
        sys.exit(f"{crd_path}: not a CustomResourceDefinition")
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = convert(version["schema"]["openAPIV3Schema"])
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        name = f"{group}_{kind}_{version['name']}.json".lower()
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        (out_dir / name).write_text(text + "\n")
        print(f"{out_dir / name}: {len(text)} bytes")


if __name__ == "__main__":
    main()

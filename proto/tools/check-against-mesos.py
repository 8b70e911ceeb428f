#!/usr/bin/env python3
"""Checks proto/proto/mesos/** against Apache Mesos's own .proto files.

Usage: proto/tools/check-against-mesos.py MESOS_CHECKOUT

Compiles both trees with protoc (the PROTOC environment variable, else `protoc` on PATH) and
compares every message field and enum value mesoblk defines with Mesos's: name, number, label,
type, type name, explicit default, deprecation and oneof. Any difference, or anything mesoblk
defines that Mesos lacks, fails the check. Fields of defined messages that mesoblk leaves out are
listed for information. Needs nothing beyond python3 and protoc.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OURS = os.path.join(HERE, "..", "proto")
ROOT = "mesos/v1/master/master.proto"  # imports every other file mesoblk defines


def describe(protoc, include, root, workdir, name):
    """FileDescriptorSet of `root` and its imports, in protoc's text format."""
    binary = os.path.join(workdir, name + ".pb")
    subprocess.run([protoc, "-I", include, "--include_imports", "-o", binary,
                    os.path.join(include, root)], check=True)
    wkt = protoc_include(protoc)
    with open(binary, "rb") as raw:
        text = subprocess.run(
            [protoc, "-I", wkt, "--decode=google.protobuf.FileDescriptorSet",
             "google/protobuf/descriptor.proto"],
            stdin=raw, check=True, capture_output=True).stdout.decode()
    return text


def protoc_include(protoc):
    """The directory holding google/protobuf/descriptor.proto next to protoc."""
    base = os.path.dirname(os.path.dirname(os.path.realpath(protoc)))
    for candidate in (os.path.join(base, "include"), "/usr/include", "/usr/local/include"):
        if os.path.exists(os.path.join(candidate, "google/protobuf/descriptor.proto")):
            return candidate
    sys.exit("cannot find google/protobuf/descriptor.proto for " + protoc)


def parse_text_format(text):
    tokens = re.findall(r'"(?:\\.|[^"\\])*"|[{}]|[A-Za-z_][\w.]*:?|-?[\d.]+(?:e[+-]?\d+)?', text)
    position = 0

    def block():
        nonlocal position
        items = []
        while position < len(tokens):
            token = tokens[position]
            if token == "}":
                position += 1
                return items
            if token.endswith(":"):
                items.append((token[:-1], tokens[position + 1]))
                position += 2
            else:
                position += 2  # name and "{"
                items.append((token, block()))
        return items

    return block()


def entries(fileset):
    def all_of(items, key):
        return [v for k, v in items if k == key]

    def one(items, key):
        found = all_of(items, key)
        return found[0] if found else None

    out = {}

    def message(m, prefix):
        name = prefix + "." + one(m, "name").strip('"')
        for field in all_of(m, "field"):
            options = one(field, "options") or []
            out[(name, one(field, "name").strip('"'))] = (
                one(field, "number"), one(field, "label"), one(field, "type"),
                (one(field, "type_name") or "").strip('"'), one(field, "default_value"),
                one(options, "deprecated"), one(field, "oneof_index"))
        for nested in all_of(m, "nested_type"):
            message(nested, name)
        for e in all_of(m, "enum_type"):
            enum(e, name)

    def enum(e, prefix):
        name = prefix + "." + one(e, "name").strip('"')
        for value in all_of(e, "value"):
            out[(name, one(value, "name").strip('"'))] = ("enum value", one(value, "number"))

    for f in all_of(fileset, "file"):
        package = (one(f, "package") or "").strip('"')
        for m in all_of(f, "message_type"):
            message(m, package)
        for e in all_of(f, "enum_type"):
            enum(e, package)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    mesos_include = os.path.join(sys.argv[1], "include")
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    if not protoc:
        sys.exit("protoc not found: set PROTOC or install protobuf-compiler")
    with tempfile.TemporaryDirectory() as workdir:
        theirs = entries(parse_text_format(describe(protoc, mesos_include, ROOT, workdir, "mesos")))
        ours = entries(parse_text_format(describe(protoc, OURS, ROOT, workdir, "ours")))
    bad = 0
    for key, value in sorted(ours.items()):
        if key not in theirs:
            print("not in Mesos:", key, value)
            bad += 1
        elif theirs[key] != value:
            print("differs:", key, "mesoblk", value, "Mesos", theirs[key])
            bad += 1
    defined = {key[0] for key in ours}
    left_out = sorted(k for k in theirs if k[0] in defined and k not in ours)
    for key in left_out:
        print("left out:", key, theirs[key])
    print("%d fields and enum values checked, %d differences, %d left out" %
          (len(ours), bad, len(left_out)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

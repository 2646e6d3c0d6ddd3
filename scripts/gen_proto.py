"""Generate the Python stubs for proto/migrated/v1/*.proto into migrated/transport/v1/.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: migrated/transport/v1)

protoc names generated imports after the proto package (``migrated.v1``); the stubs live in
``migrated.transport.v1``, so imports are rewritten after generation.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "migrated" / "transport" / "v1"
_IMPORT = re.compile(r"\bfrom migrated\.v1 import\b|\bimport migrated\.v1\.")


def generate(out: Path) -> list[Path]:
    """Generate the stubs into ``out``; return the files written."""
    protos = sorted(PROTO_ROOT.glob("migrated/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *map(str, protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "migrated" / "v1").iterdir()):
            text = _IMPORT.sub(_rewrite, src.read_text())
            dest = out / src.name
            dest.write_text(text)
            written.append(dest)
        init = out / "__init__.py"
        init.write_text('"""Generated protobuf and gRPC stubs (scripts/gen_proto.py); do not edit."""\n')
        written.append(init)
    return written


def _rewrite(match: re.Match[str]) -> str:
    return match.group(0).replace("migrated.v1", "migrated.transport.v1")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path.relative_to(target.parent) if path.is_relative_to(target.parent) else path)

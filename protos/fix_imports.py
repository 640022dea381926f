"""Post-process the modules that ``grpc_tools.protoc`` writes into ``protos/src/vitcodec/protos/`` (``make protos``).

1. protoc writes bare imports (``import grpc_service_pb2 as ...``), which only work with ``protos/`` on
   ``sys.path``; they become package imports (``from vitcodec.protos import grpc_service_pb2 as ...``).
2. The generated descriptors are registered in vitcodec's own descriptor pool (``vitcodec.protos._pool``),
   not protobuf's process-wide default one. The v2 protocol's messages must be named ``inference.*`` to be
   wire-compatible, and ``tritonclient`` registers the same names in the default pool: two registrations
   of one name abort the second import. With a pool of our own both live in one process (tests, tools).

Idempotent: running it twice changes nothing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "src" / "vitcodec" / "protos"  # the generated modules
PACKAGE = "vitcodec.protos"

_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = "_vitcodec_pool.POOL.AddSerializedFile("
_POOL_IMPORT = f"from {PACKAGE} import _pool as _vitcodec_pool\n"
_IMPORT_ANCHOR = "# @@protoc_insertion_point(imports)\n"


def fix_source(text: str) -> str:
    text = _BARE_IMPORT.sub(rf"from {PACKAGE} import \1 as \2", text)
    if _DEFAULT_POOL in text:
        text = text.replace(_DEFAULT_POOL, _OWN_POOL)
        if _POOL_IMPORT not in text:
            if _IMPORT_ANCHOR not in text:
                raise SystemExit("fix_imports: generated module has no imports insertion point")
            text = text.replace(_IMPORT_ANCHOR, _POOL_IMPORT + _IMPORT_ANCHOR, 1)
    return text


def main(folder: Path = HERE) -> int:
    changed = 0
    for path in sorted(folder.glob("*_pb2*.py")):
        before = path.read_text()
        after = fix_source(before)
        if after != before:
            path.write_text(after)
            changed += 1
    print(f"fix_imports: {changed} module(s) rewritten in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))

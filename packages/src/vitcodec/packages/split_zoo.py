"""Move the cloud files of a freshly exported zoo into the cloud distribution's folder of the same layout.

``vitcodec export --out ZOO`` writes whole packages; the bundled zoo keeps only the manifest and the edge files
in ``vitcodec-packages`` (see `vitcodec.packages.bundled`), so ``make zoo`` runs this after exporting:
``python -m vitcodec.packages.split_zoo ZOO CLOUD_ZOO``. Files already moved are left alone, so it can run
again after any export.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .discovery import iter_packages
from .package import CLOUD_FILES


def split_zoo(zoo: Path, cloud_zoo: Path) -> list[Path]:
    """Move every `CLOUD_FILES` file that a package of ``zoo`` holds in its own folder to
    ``cloud_zoo/<name>/<version>/`` (replacing an older copy there); returns the files' new paths."""
    moved = []
    for package in iter_packages(Path(zoo)):
        names = package.manifest.get("files", {})
        target = Path(cloud_zoo) / package.path.parent.name / package.path.name
        for key in CLOUD_FILES:
            source = package.path / names[key] if key in names else None
            if source is None or not source.is_file():
                continue
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target / source.name)
            moved.append(target / source.name)
    return moved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitcodec.packages.split_zoo", description=__doc__)
    parser.add_argument("zoo", type=Path, help="the exported zoo (packages/src/vitcodec/packages/zoo)")
    parser.add_argument("cloud_zoo", type=Path, help="where its cloud files go (cloud/src/vitcodec/cloud/zoo)")
    args = parser.parse_args(argv)
    for path in split_zoo(args.zoo, args.cloud_zoo):
        print(f"moved to {path}")


if __name__ == "__main__":
    main()

"""Render the zoo's model card table from the package manifests, so docs never drift from measurements."""

from __future__ import annotations

from typing import Any

from vitcodec.models.losses import QUALITIES
from vitcodec.packages import iter_packages, zoo_root


def zoo_table() -> str:
    rows = ["| model | quality (α, β) | top-1 | top-5 | bytes / image | bpp | PSNR (dB) | decode failures | model id |",
            "|---|---|---|---|---|---|---|---|---|"]
    for pkg in iter_packages(zoo_root()):
        m = pkg.manifest.get("metrics", {})
        t = pkg.manifest.get("training", {})
        alpha, beta = (None, None) if pkg.quality is None else QUALITIES.get(pkg.quality, (None, None))
        alpha, beta = t.get("alpha") or alpha, t.get("beta") or beta
        distilled = f"; {t['distill']} KD {t['distill_alpha']}" if t.get("teacher") else ""
        q = f"q{pkg.quality} (α {alpha}, β {beta}{distilled})" if pkg.quality else f"— (step one{distilled})"

        def f(key: str, fmt: str, m: dict[str, Any] = m) -> str:
            value = m.get(key)
            return "—" if value is None else format(value, fmt)

        top1 = f"{100 * m['top1']:.2f} %" if "top1" in m else "—"
        top5 = f"{100 * m['top5']:.2f} %" if "top5" in m else "—"
        rows.append(f"| `{pkg.name}` | {q} | {top1} | {top5} | {f('bytes_per_image', '.1f')} | {f('bpp', '.3f')} | "
                    f"{f('psnr', '.2f')} | {m.get('decode_failures', '—') if pkg.compresses else '—'} | "
                    f"{pkg.model_id.hex() or '—'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(zoo_table())

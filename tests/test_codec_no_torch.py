"""The edge runs codec/ without torch: importing and using it must not pull torch (or its friends) in."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_codec_never_imports_torch():
    script = textwrap.dedent(
        """
        import sys
        import vitcodec.codec
        import vitcodec.codec.bitstream, vitcodec.codec.entropy_coder, vitcodec.codec.errors
        import vitcodec.codec.fixed_point, vitcodec.codec.integer_hyper_synthesis
        import vitcodec.codec.latent_codec, vitcodec.codec.tables
        import vitcodec.codec.int8_hyper_synthesis, vitcodec.codec.int8_quantise, vitcodec.codec.hyper_synthesis
        vitcodec.codec.int8_gemm.default_int8_engine(), vitcodec.codec.exact_gemm.default_engine()
        heavy = sorted(m for m in ("torch", "compressai", "timm", "torchvision", "onnx") if m in sys.modules)
        assert not heavy, heavy
        ours = sorted(m for m in sys.modules if m.startswith("vitcodec.")
                      and not m.startswith(("vitcodec.codec", "vitcodec.ort_session")))
        assert not ours, ours  # codec depends on nothing else of ours but the root helpers
        import vitcodec.packages
        vitcodec.packages.resolve_model()
        heavy = sorted(m for m in ("torch", "compressai", "timm", "torchvision", "onnx") if m in sys.modules)
        assert not heavy, heavy
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr

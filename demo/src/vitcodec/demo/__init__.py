"""vitcodec.demo: ``make demo``, the whole system on one machine (``python -m vitcodec.demo``).

A system-level program, not part of the server: it starts ``vitcodec-cloud serve``, drives ``vitcodec-edge``
against it over gRPC and REST, and measures what the bitstreams save against PNG and JPEG. ``commands``
builds the commands (shared with ``docker-compose.yml``), ``report`` reads the samples and sums up the
answers, ``run`` runs the steps. The server process helpers are `vitcodec.cloud.process`, shared with the
benchmarks. Torch-free.
"""

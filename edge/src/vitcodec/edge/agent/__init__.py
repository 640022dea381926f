"""The store-and-forward edge agent behind ``vitcodec-edge watch`` (no torch, like everything under ``edge/``).

An edge device loses its network and its power; the agent never loses an image to either. Each job has its
own module so each can be reasoned about (and tested) alone:

- `outbox`: the on-disk spool; an entry is durable (tmp, fsync, rename, fsync folder) before it is sent.
- `results`: the JSON-lines answer log; an answer is fsynced before its outbox entry goes, and its entry id
  lets a restart recognise answers already given (exactly once across crashes).
- `intake`: finds new, finished files in the watched folders and encodes them in batches into the outbox.
- `uploader`: sends outbox entries with bounded concurrency, retrying transient failures forever with capped
  exponential backoff and jitter; permanent refusals go to ``rejected/``.
- `status`: counters, the live status line and structured (``--json``) logs.
- `runner`: wires them together and handles SIGINT/SIGTERM; `command` is the typer command.

See docs/edge-agent.md for how to run it on a device.
"""

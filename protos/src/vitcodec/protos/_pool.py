"""vitcodec's own protobuf descriptor pool (see ``fix_imports.py`` for why it is not the default pool)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()

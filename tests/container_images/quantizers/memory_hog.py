"""Hostile: allocates (and touches) memory far beyond its limit, 64 MiB at a time."""

blocks = []
for _ in range(10_000):
    blocks.append(bytearray(64 << 20))
    print(f"holding {len(blocks) * 64} MiB", flush=True)

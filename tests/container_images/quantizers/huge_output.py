"""Hostile: writes 10 GB to /output, 16 MiB per write."""

block = b"\0" * (16 << 20)
with open("/output/weights.safetensors", "wb") as out:
    for _ in range(10 * 1000**3 // len(block)):
        out.write(block)

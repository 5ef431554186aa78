"""Floods stdout (about 1 MB) and writes nothing: its logs must come back size-capped."""

for i in range(20_000):
    print(f"line {i:06d} " + "x" * 40)
print("last line")

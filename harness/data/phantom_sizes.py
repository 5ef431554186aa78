"""The phantom sizes (``harness.data.phantoms``), named where a command-line parser can offer them
without importing the generator's imaging libraries."""

from typing import Literal

PhantomSize = Literal["demo", "clinical"]
PHANTOM_SIZES: tuple[PhantomSize, ...] = ("demo", "clinical")

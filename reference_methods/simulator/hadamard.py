"""Orthonormal Hadamard matrices R = H / sqrt(N) (R R^T = I) of the sizes a rotation supports.

H is an N x N matrix of +-1 with H H^T = N I, built as a Kronecker product H_b (x) H_{2^k} of
- Sylvester's H_{2^k}: H_1 = [1], H_{2m} = [[H_m, H_m], [H_m, -H_m]];
- a base H_b of order b = 1, 12 or 20 from Paley's first construction: for a prime q = 3 (mod 4)
  with Legendre symbol chi, the Jacobsthal matrix Q_ij = chi(j - i) is antisymmetric and
  H = I + [[0, 1^T], [-1, Q]] is Hadamard of order q + 1 (q = 11 gives 12, q = 19 gives 20).
So N = 2^k, 12 * 2^k or 20 * 2^k; any other size is refused.
"""

import torch

_PALEY_PRIMES = {12: 11, 20: 19}


def hadamard_base(size: int) -> int | None:
    """The base order b in {1, 12, 20} with size = b * 2^k, or None when there is none."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    for base in (1, 12, 20):
        if size % base == 0 and _is_power_of_two(size // base):
            return base
    return None


def hadamard_matrix(size: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix R (size, size) in float64; ValueError for a size that is
    not 2^k, 12 * 2^k or 20 * 2^k."""
    base = hadamard_base(size)
    if base is None:
        raise ValueError(
            f"unsupported Hadamard size {size} (supported: 2^k, 12 * 2^k and 20 * 2^k)"
        )
    matrix = _paley(_PALEY_PRIMES[base]) if base > 1 else torch.ones(1, 1, dtype=torch.float64)
    sylvester = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while len(matrix) < size:
        matrix = torch.kron(matrix, sylvester)
    return matrix / len(matrix) ** 0.5


def _paley(prime: int) -> torch.Tensor:
    """Paley's Hadamard matrix of order prime + 1 (prime = 3 mod 4), entries +-1."""
    residues = {(x * x) % prime for x in range(1, prime)}
    chi = [0] + [1 if r in residues else -1 for r in range(1, prime)]
    jacobsthal = torch.tensor(
        [[chi[(j - i) % prime] for j in range(prime)] for i in range(prime)], dtype=torch.float64
    )
    skew = torch.zeros(prime + 1, prime + 1, dtype=torch.float64)
    skew[0, 1:] = 1.0
    skew[1:, 0] = -1.0
    skew[1:, 1:] = jacobsthal
    return torch.eye(prime + 1, dtype=torch.float64) + skew


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0

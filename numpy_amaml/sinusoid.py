"""Sinusoid regression tasks (MAML §5.1):  y = A sin(x − φ).

Per task: amplitude A ~ U[0.1, 5], phase φ ~ U[0, π]; inputs x ~ U[−5, 5];
K support and Q query points. Host-side sampling with a seeded NumPy Generator;
arrays are moved to the active backend with ``backend.asarray``.
"""
import numpy as np

from numpy_amaml.backend import asarray
from numpy_amaml.maml import TaskBatch

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


class SinusoidTasks:
    """Seeded sampler of sinusoid task batches.

    sample(B) -> (TaskBatch with x, y of shape (B, K, 1) / (B, Q, 1), amplitudes (B,), phases (B,))
    """

    def __init__(self, shots=10, queries=None, seed=0):
        if shots < 1:
            raise ValueError(f"shots must be ≥ 1, got {shots}")
        self.shots = int(shots)
        self.queries = int(shots if queries is None else queries)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size):
        B, rng = int(batch_size), self.rng
        amplitude = rng.uniform(*AMPLITUDE, size=B)
        phase = rng.uniform(*PHASE, size=B)
        x_support = rng.uniform(*X_RANGE, size=(B, self.shots, 1))
        x_query = rng.uniform(*X_RANGE, size=(B, self.queries, 1))
        batch = TaskBatch(asarray(x_support), asarray(sine(x_support, amplitude, phase)),
                          asarray(x_query), asarray(sine(x_query, amplitude, phase)))
        return batch, amplitude, phase

    def get_state(self):
        """The generator's state as a JSON-serialisable dict (for resuming)."""
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


def sine(x, amplitude, phase):
    """A_i sin(x − φ_i) for x of shape (B, N, 1) and amplitude, phase of shape (B,)."""
    return amplitude[:, None, None] * np.sin(x - phase[:, None, None])

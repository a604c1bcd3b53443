"""bertnp: BERT pretraining (masked LM + next-sentence prediction) written from scratch in NumPy."""
from bertnp import backend
from bertnp.backend import get_backend, set_backend

__version__ = "0.1.0"

backend.default_backend_from_env()

__all__ = ["backend", "get_backend", "set_backend", "__version__"]

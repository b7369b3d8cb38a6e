"""sleep_jax: "Language Models Need Sleep" in JAX/Flax (see README.md)."""
from sleep_jax import _env

_env.install()   # before anything imports TensorFlow: quiet, and off the GPU (why and how: sleep_jax/_env.py)

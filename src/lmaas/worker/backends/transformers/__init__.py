"""The transformers backend: PyTorch models through Hugging Face transformers.

It loads a Hugging Face folder (safetensors weights only; nothing is fetched from a hub) or a
GGUF file (through transformers' GGUF loader, dequantised to float32):

- ``tasks``: ``TransformersBackend``, the model, and the embed / classify / score / tokenize
  batches the task loop (``lmaas.worker.tasks``) puts together;
- ``generate``: ``TorchSlots``, sequence slots over a causal model for the step loop
  (``lmaas.worker.loop``);
- ``sampler``: llama.cpp's sampler chain in numpy; ``guides``: ``response_format`` automata.

Importing any of them first runs this module, which keeps transformers off the network and
torch's OpenMP threads quiet: both must be settled before torch is imported.
"""

import os

# Never reach for a hub: every file must be in the folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar, in a worker's log
# OpenMP threads that spin between forward passes burn cores the gateway and the other workers
# need: sleeping at once cut this worker's CPU time by ~20% at the same /v1/embeddings throughput
# (BENCHMARKS.md). libgomp reads this when torch loads it, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

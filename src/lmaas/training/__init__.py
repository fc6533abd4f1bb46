"""Training on the CPU: fine-tuning (full or LoRA) and knowledge distillation of causal LMs.

A library the job runner calls; it knows nothing of jobs, the gateway or the store.

- ``formats``: training JSONL lines to examples (chat, prompt/completion, text), and a whole
  file's check without a model (imports no torch: cheap at job creation);
- ``data``: examples to token ids and labels (loss on assistant turns / completions only),
  padded batches;
- ``models``: a causal LM and its tokenizer from a GGUF file or a Hugging Face folder, a
  student made of every other layer of a teacher, the teacher/student checks;
- ``lora``: LoRA adapters through peft: add, merge;
- ``losses``: cross-entropy and the distillation loss, pure functions of logits;
- ``hyperparameters``: ``auto`` resolved from the data's size, ranges checked, the rate schedule;
- ``loop``: ``train()``: steps, metrics events, cancel, checkpoints, resume, divergence;
- ``checkpoints``: safetensors + JSON checkpoints, the newest kept;
- ``evaluation``: held-out loss and perplexity;
- ``export`` and ``gguf_export``: what a run leaves (a Hugging Face folder, the adapter, GGUF).

Nothing is imported here, so ``lmaas.training.formats`` loads without torch.
"""

"""Paper-size configs (PAPER sec. 5, Table 5 hyper-parameters) for the models the paper used: Qwen2.5-7B knowledge
incorporation on SQuAD and Llama-3.2-1B few-shot ARC. The weights come from a Hugging Face folder the user sets
(`--config.model.path=`); the architecture fields mirror that model's config.json and drive the memory plan
(`python -m experiments.memory_plan --config=configs/paper/<file>.py`, docs/paper_scale/plan.md)."""

"""Everything that runs inside the training process (`python -m runner.train`): the entry point,
the Trainer callbacks and the tokenized data pipeline. The only place that imports torch,
transformers, peft, bitsandbytes or deepspeed; nothing outside it imports it (launchers name it by module)."""

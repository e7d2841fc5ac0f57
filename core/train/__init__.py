"""Train: LoRA fine-tuning as a job that lives outside the app.

  config     TrainConfig (one dataclass, YAML round-trip), presets
  lora       the job: launch/resume from a page, `main(cfg)` in this process, the adapter it saves
  backends   unsloth on CUDA, transformers + peft + trl elsewhere; the trainer they build
  dpo        the DPO path (method: dpo): preference pairs tokenised by Iris, trl's DPOTrainer
  callbacks  status, metrics, graceful stop, mirrors, torn-checkpoint clean-up
  estimate   memory/time before launch, the device, "fill this GPU"
The run directory's layout belongs to core.runs.
"""
